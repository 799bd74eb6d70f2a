"""Checks a dataset folder before training: `python -m jaxseg.data.check --data-dir PATH`.

Detects the layout as training does (the table in `datasets.py`), reads every file a run would
read (the dataset's own `check` lists them), and reports per split the counts, shapes, voxel
spacings, intensity ranges and label values, then every problem by file name. Unlike training,
which stops at the first bad file, the check goes on and lists them all. Exit status 0 when the
data would train, 2 when a problem would stop training (a missing, unreadable or inconsistent
file, a label outside 0..K-1).

A dataset module's `check` lists its files without reading them (its loader would stop at the
first error); a dataset without one is checked through its `load` and the sources it returns,
item by item.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys

import numpy as np
import tqdm

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import datasets
from jaxseg.data import spec as spec_lib
from jaxseg.data.sources import LazyVolumes
from jaxseg.data.spec import Item
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError, JaxsegError

_MAX_SHAPES = 4  # distinct shapes listed before switching to per-axis ranges


@dataclasses.dataclass
class SplitStats:
  """What was read of one split."""

  kind: str = 'files'
  count: int = 0
  shapes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  spacings: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  low: float = np.inf
  high: float = -np.inf
  labels: set = dataclasses.field(default_factory=set)
  unlabeled: int = 0

  def add(self, image: np.ndarray, label: np.ndarray | None, spacing) -> None:
    self.count += 1
    self.shapes[tuple(int(s) for s in image.shape)] += 1
    if spacing is not None:
      self.spacings[tuple(round(float(s), 3) for s in spacing)] += 1
    self.low, self.high = min(self.low, float(image.min())), max(self.high, float(image.max()))
    if label is None:
      self.unlabeled += 1
    else:
      self.labels.update(int(v) for v in np.unique(label))

  def describe(self) -> str:
    if not self.count:
      return f'0 {self.kind} readable'
    parts = [f'{self.count} {self.kind}', 'shapes ' + _shapes(self.shapes)]
    if self.spacings:
      parts.append('spacing ' + _shapes(self.spacings, unit=' mm'))
    parts.append(f'intensity {self.low:.4g}..{self.high:.4g}')
    if self.labels:
      parts.append(f'label values {sorted(self.labels)}')
    if self.unlabeled:
      parts.append(f'{self.unlabeled} without label')
    return '; '.join(parts)


def _shapes(counter: collections.Counter, unit: str = '') -> str:
  """`(10, 256, 216) x3, (8, 232, 256) x2`, or per-axis ranges when there are many."""
  if len(counter) <= _MAX_SHAPES:
    return ', '.join(f'{tuple(k)}{unit}' + (f' x{n}' if n > 1 else '')
                     for k, n in counter.most_common())
  keys = np.array([k for k in counter if len(k) == len(next(iter(counter)))])
  ranges = ' x '.join(f'{lo:g}..{hi:g}' for lo, hi in zip(keys.min(0), keys.max(0)))
  return f'{ranges}{unit} ({len(counter)} distinct)'


@dataclasses.dataclass
class CheckResult:
  data_dir: str
  layout: str
  num_classes: int
  splits: dict[str, SplitStats]
  problems: list[str]  # one line each, starting with the file; any of them stops training
  warnings: list[str]  # worth knowing, harmless to training


# --- the files ------------------------------------------------------------------------------


def _loaded_items(spec, config) -> spec_lib.Findings:
  """A layout without a `check` of its own: what its `load` returns, item by item."""
  try:
    data = spec.load(config)
  except JaxsegError as e:
    return spec_lib.Findings({}, [str(e)])
  items: dict[str, list[Item]] = {'train': []}
  for source in (data.labeled, data.unlabeled):
    if hasattr(source, 'volumes'):
      items['train'] += [Item(v.path or v.name, lambda v=v: v) for v in source.volumes]
    else:
      items['train'] += [Item(f'{data.layout} item {i}', lambda s=source, i=i: s[i])
                         for i in range(len(source))]
  for split, volumes in data.splits.items():
    names = volumes.names if isinstance(volumes, LazyVolumes) else [v.name for v in volumes]
    items[split] = [Item(f'{split} volume {n}', lambda vs=volumes, i=i: vs[i])
                    for i, n in enumerate(names)]
  return spec_lib.Findings(items)


# --- the check ------------------------------------------------------------------------------


def check_data(data_dir: str, *, num_classes: int | None = None, experiment: str | None = None,
               progress: bool = False) -> CheckResult:
  """Reads every file of `data_dir` a run would read; returns statistics and problems.

  Raises:
    DataError: the folder is missing or its layout unknown (nothing could be checked).
  """
  if not data_dir:
    raise DataError('--data-dir: empty; give the dataset folder to check')
  spec = datasets.detect(data_dir)
  config = (config_lib.load_experiment(experiment, 'paper') if experiment
            else config_lib.base_config())
  with config.unlocked():
    config.data.dir = os.path.abspath(data_dir)
    config.data.labeled_num = 1  # any split of labeled/unlabeled reads the same files
    config.data.labeled_fraction = 0.0
  try:
    config = datasets.resolve_config(config)  # the dataset's classes and config block
  except JaxsegError as e:
    return CheckResult(config.data.dir, spec.name, config.num_classes, {}, [str(e)], [])
  if num_classes:
    with config.unlocked():
      config.num_classes = num_classes
  root = config.data.dir
  found = spec.check(root, config) if spec.check else _loaded_items(spec, config)
  items, problems, warnings = found.items, found.problems, found.warnings
  layout = spec.name

  stats = {split: SplitStats() for split in items}
  todo = [(split, item) for split, split_items in items.items() for item in split_items]
  for split, item in tqdm.tqdm(todo, desc='check', unit='file', leave=False,
                               disable=not progress or not todo):
    try:
      read = item.load()
    except (DataError, ConfigError) as e:
      problems.append(str(e))
      continue
    if isinstance(read, Volume):
      stats[split].kind = 'volumes'
      stats[split].add(read.image, read.label, read.spacing)
    else:
      stats[split].kind = 'slices'
      stats[split].add(read['image'], read.get('label'), None)
  for split, s in stats.items():
    absent = sorted(set(range(1, config.num_classes)) - s.labels)
    if s.count and s.count > s.unlabeled and absent:
      warnings.append(f'{root}: {split} split has no voxel of class(es) {absent}')
  return CheckResult(root, layout, config.num_classes, stats, problems, warnings)


def format_result(result: CheckResult) -> str:
  lines = [f'{result.data_dir}: layout {result.layout}, {result.num_classes} classes '
           '(background included)']
  for split, s in result.splits.items():
    lines.append(f'  {split}: {s.describe()}')
  if result.warnings:
    lines += ['warnings:'] + [f'  {w}' for w in result.warnings]
  if result.problems:
    lines += [f'problems ({len(result.problems)}, each would stop training):']
    lines += [f'  {p}' for p in result.problems]
  else:
    lines.append('no problems found')
  return '\n'.join(lines)


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.parser('jaxseg.data.check', __doc__)
  parser.add_argument('--data-dir', required=True, help='dataset folder')
  parser.add_argument('--num-classes', type=int,
                      help='classes including background (default: the layout\'s own)')
  parser.add_argument('--experiment', help="take num_classes and data options from this "
                      "experiment's paper config")
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(argv)
  if args.num_classes is not None and not 2 <= args.num_classes <= 256:
    raise ConfigError(f'--num-classes {args.num_classes}: must be in 2..256')
  result = check_data(args.data_dir, num_classes=args.num_classes, experiment=args.experiment,
                      progress=not args.no_progress)
  print(format_result(result))
  if result.problems:
    raise DataError(f'{len(result.problems)} problem(s) in {result.data_dir} would stop training '
                    '(listed above)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
