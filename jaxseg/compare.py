"""Compares finished runs in the papers' table layout: `python -m jaxseg.compare RUN_DIR... [--split S]`.

One row per configuration: method, labeled data, DSC, Jaccard, HD95, ASD (means over foreground
classes) and the per-class DSC, then the step budget and training wall time. A cell is
mean ± std over the split's volumes for a single run; runs whose configs differ only in `seed`
are one row, and their cells are mean ± std over seeds of each run's mean over volumes. Dice and
Jaccard are in %, as the papers print them. Undefined distances (a structure missing from the
prediction) are left out of a volume's class mean; a volume with none defined is left out.
Printed as Markdown and saved as `<output>.md` and `<output>.csv`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys

import numpy as np

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.errors import DataError, JaxsegError, StorageError

METRICS = (('dice', 'DSC (%)', 100.0, 2), ('jaccard', 'Jaccard (%)', 100.0, 2),
           ('hd95', 'HD95', 1.0, 2), ('asd', 'ASD', 1.0, 2))
# Settings that change neither the model nor the data it sees: runs differing only in these
# (and the seed) are repeats of one configuration.
_IGNORED_KEYS = ('seed', 'log_every', 'checkpoint', 'mesh', 'data.read_threads')


@dataclasses.dataclass
class RunResult:
  """One finished run: its config and, per metric, per-volume means over classes."""

  workdir: str
  config: object
  split: str
  per_volume: dict[str, np.ndarray]  # metric -> (volumes,) mean over classes, NaN if undefined
  per_class_dice: np.ndarray  # (volumes, classes)
  steps: int
  wall_seconds: float | None


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def flat_config(config) -> dict:
  """The config as flat `key.sub: value` pairs, without the blocks of loss terms it does not use
  (older runs carry every block: two runs differing only there were trained alike)."""
  unused = config_lib.unused_method_blocks(config)
  return _flat({k: v for k, v in config.to_dict().items() if k not in unused})


def signature(config) -> dict:
  """The config as flat `key: value` pairs, without the keys that make repeats differ."""
  flat = flat_config(config)
  return {k: v for k, v in flat.items()
          if not any(k == i or k.startswith(i + '.') for i in _IGNORED_KEYS)}


def read_run(workdir: str, split: str | None) -> RunResult:
  config = config_lib.read_run_config(workdir)
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    raise DataError(f'{path}: missing (training has not finished)')
  try:
    with open(path) as f:
      results = json.load(f)
    splits = results['splits']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f'{path}: not a jaxseg results file ({type(e).__name__}: {e})') from None
  split = split or ('test' if 'test' in splits else 'val')
  if split not in splits:
    raise DataError(f'{path}: no {split} split (has {", ".join(sorted(splits))})')
  volumes = splits[split]['per_volume']
  values = {m: np.array([[np.nan if x is None else x for x in v[m]] for v in volumes], np.float64)
            for m, *_ in METRICS}
  per_volume = {}
  for metric, array in values.items():
    defined = ~np.isnan(array)
    count = defined.sum(axis=1)
    per_volume[metric] = np.where(count > 0, np.where(defined, array, 0).sum(axis=1)
                                  / np.maximum(count, 1), np.nan)
  return RunResult(workdir, config, split, per_volume, values['dice'],
                   int(results.get('steps', config.steps)), results.get('train_wall_seconds'))


def _mean_std(values: np.ndarray) -> tuple[float, float]:
  values = values[~np.isnan(values)]
  if not values.size:
    return float('nan'), float('nan')
  return float(values.mean()), float(values.std())


def _labeled(config) -> str:
  fraction = config.data.get('labeled_fraction', 0)
  return f'{fraction:.1%}'.replace('.0%', '%') if fraction else str(config.data.labeled_num)


def group_runs(runs: list[RunResult]) -> list[list[RunResult]]:
  """Runs with equal `signature`, in the order first given."""
  groups: list[list[RunResult]] = []
  keys: list[dict] = []
  for run in runs:
    sig = signature(run.config)
    for key, group in zip(keys, groups):
      if key == sig:
        group.append(run)
        break
    else:
      keys.append(sig)
      groups.append([run])
  return groups


def _method_names(groups: list[list[RunResult]]) -> list[str]:
  """The experiment name, plus the settings that tell apart rows sharing it (e.g. ablations)."""
  sigs = [signature(g[0].config) for g in groups]
  names = []
  for sig, group in zip(sigs, groups):
    name = group[0].config.experiment or os.path.basename(os.path.normpath(group[0].workdir))
    same = [s for s in sigs if s.get('experiment') == sig.get('experiment')]
    differ = sorted(k for k in sig if any(s.get(k) != sig[k] for s in same)
                    and k not in ('experiment', 'data.labeled_num', 'data.labeled_fraction'))
    if differ:
      name += ' (' + ', '.join(f'{k}={sig[k]}' for k in differ) + ')'
    names.append(name)
  return names


def table_rows(runs: list[RunResult], label=None) -> tuple[list[dict], list[str]]:
  """One dict per configuration with every number; and the shared class names (or []).

  `label(run)` names a row (default: the experiment and the settings that tell rows apart).
  """
  class_names = list(runs[0].config.class_names)
  if any(list(r.config.class_names) != class_names for r in runs):
    class_names = []
  groups = group_runs(runs)
  names = [label(g[0]) for g in groups] if label else _method_names(groups)
  rows = []
  for name, group in zip(names, groups):
    row = {'method': name, 'labeled': _labeled(group[0].config), 'seeds': len(group),
           'split': group[0].split, 'units': group[0].config.eval.units,
           'steps': group[0].steps,
           'runs': ';'.join(r.workdir for r in group)}
    walls = [r.wall_seconds for r in group if r.wall_seconds is not None]
    row['wall_seconds'] = float(np.mean(walls)) if walls else float('nan')
    columns = [(m, lambda r, m=m: r.per_volume[m]) for m, *_ in METRICS]
    columns += [(f'dice/{c}', lambda r, i=i: r.per_class_dice[:, i])
                for i, c in enumerate(class_names)]
    for key, values in columns:
      if len(group) == 1:
        row[key] = _mean_std(values(group[0]))
      else:  # the spread over seeds of each run's mean over volumes
        row[key] = _mean_std(np.array([_mean_std(values(r))[0] for r in group]))
    rows.append(row)
  return rows, class_names


def _cell(mean_std: tuple[float, float], scale: float, digits: int) -> str:
  mean, std = mean_std
  if np.isnan(mean):
    return 'n/a'
  return f'{mean * scale:.{digits}f} ± {std * scale:.{digits}f}'


def _wall(seconds: float) -> str:
  if np.isnan(seconds):
    return 'n/a'
  hours, rest = divmod(int(round(seconds)), 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}'


def format_markdown(rows: list[dict], class_names: list[str]) -> str:
  units = sorted({r['units'] for r in rows})
  unit = units[0] if len(units) == 1 else 'mixed units, see CSV'
  splits = sorted({r['split'] for r in rows})
  header = ['Method', 'Labeled', 'Seeds'] + [
      label if m in ('dice', 'jaccard') else f'{label} ({unit})' for m, label, *_ in METRICS]
  header += [f'{c} DSC (%)' for c in class_names] + ['Steps', 'Wall time']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] * 3 + ['---:'] * (len(header) - 3)) + '|']
  for r in rows:
    cells = [r['method'], r['labeled'], str(r['seeds'])]
    cells += [_cell(r[m], scale, digits) for m, _, scale, digits in METRICS]
    cells += [_cell(r[f'dice/{c}'], 100.0, 2) for c in class_names]
    cells += [str(r['steps']), _wall(r['wall_seconds'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  note = (f'{", ".join(splits)} split. Cells: mean ± std over volumes (one run) or over seeds '
          '(several runs of one config, each first averaged over volumes); DSC, Jaccard, HD95 '
          'and ASD averaged over foreground classes. Wall time: training only (h:mm:ss).')
  return '\n'.join(lines) + '\n\n' + note


def format_csv(rows: list[dict], class_names: list[str]) -> str:
  keys = [m for m, *_ in METRICS] + [f'dice/{c}' for c in class_names]
  fields = ['method', 'labeled', 'seeds', 'split', 'units']
  fields += [f'{k}_{s}' for k in keys for s in ('mean', 'std')]
  fields += ['steps', 'wall_seconds', 'runs']
  out = io.StringIO()
  writer = csv.DictWriter(out, fields, lineterminator='\n')
  writer.writeheader()
  for r in rows:
    flat = {f: r[f] for f in fields if f in r}
    for k in keys:
      flat[f'{k}_mean'], flat[f'{k}_std'] = r[k]
    writer.writerow(flat)
  return out.getvalue()


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.parser('jaxseg.compare', __doc__)
  parser.add_argument('runs', nargs='+', metavar='RUN_DIR', help='finished run directories')
  parser.add_argument('--split', help='split to compare (default: test where every run has it, '
                      'else val)')
  parser.add_argument('--output', default='comparison',
                      help='writes OUTPUT.md and OUTPUT.csv (default: ./comparison)')
  args = parser.parse_args(argv)
  split = args.split
  if split is None:
    has_test = []
    for workdir in args.runs:
      try:
        has_test.append(read_run(workdir, None).split == 'test')
      except JaxsegError:
        has_test.append(True)  # reported below
    split = 'test' if all(has_test) else 'val'
  runs = []
  for workdir in args.runs:
    try:
      runs.append(read_run(workdir, split))
    except JaxsegError as e:
      print(f'skipped: {e}', file=sys.stderr)
  if not runs:
    raise DataError(f'no finished run among {len(args.runs)} given (reasons above)')
  rows, class_names = table_rows(runs)
  markdown = format_markdown(rows, class_names)
  print(markdown)
  try:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + '.md', 'w') as f:
      f.write(markdown + '\n')
    with open(args.output + '.csv', 'w') as f:
      f.write(format_csv(rows, class_names))
  except OSError as e:
    raise StorageError(f'{args.output}: cannot write the tables ({e})') from None
  print(f'\nsaved {args.output}.md and {args.output}.csv')
  return 0


if __name__ == '__main__':
  sys.exit(main())
