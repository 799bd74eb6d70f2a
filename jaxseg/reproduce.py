"""Reproduces a paper comparison: every method of a suite, every seed, one table.

  python -m jaxseg.reproduce --suite acdc --data-dir D --labeled-num 7 --profile quick \\
      --seeds 0,1 --workdir W [--methods supervised,plgcl] [--steps N] [--set key=value ...]

Each run trains as `python -m jaxseg.run` would, in its own process, into `W/<method>/seed_<s>`:
a finished run (it has `results.json`) is skipped, a killed one is resumed, so a reproduction can
span several sittings. Runs go seed by seed (every method's seed 0 first), so an early stop still
leaves a complete comparison. The end is `compare`'s table over the validation split (mean ± std
over seeds; checkpoints are chosen on validation only) and, when every run's data has a test
split, a second table of each run's best-validation checkpoint on it, never used for any choice.
`--table-only` prints the tables of the runs finished so far and trains nothing. `--export DIR`
copies each finished run's record (its config, results and training log; no checkpoints) into
`DIR/<method>/seed_<s>`, small enough to commit, so the table can be printed again from `DIR`
with `--table-only` after the workdir is gone.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time

from jaxseg import cli, compare
from jaxseg import config as config_lib
from jaxseg import run as run_lib
from jaxseg.errors import ConfigError, JaxsegError


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of a suite: an experiment and the `--set` overrides that make it this method."""

  name: str
  experiment: str
  overrides: tuple[str, ...] = ()
  all_labeled: bool = False  # ignores --labeled-num (the fully supervised upper bound)
  # Its overrides drop stages of a staged experiment: the stages left train the experiment's
  # whole budget (a control trains as long as the method it controls).
  whole_budget: bool = False


SUITES: dict[str, tuple[Method, ...]] = {
    # PLGCL's Table 1-2 comparison on ACDC, with the other 2D methods of the library.
    'acdc': (
        Method('supervised', 'acdc_supervised'),
        Method('fullysupervised', 'acdc_fullysupervised', all_labeled=True),
        Method('meanteacher', 'acdc_meanteacher'),
        Method('plgcl', 'acdc_plgcl'),
        # Table 2's ablation: the same run without the PLGCL term.
        Method('plgcl_no_plgcl', 'acdc_plgcl', ("losses=('supervised','mean_teacher')",)),
        Method('plgcl_no_warmup', 'acdc_plgcl', ('plgcl.warmup_steps=0',)),
        # A control, not in the paper: PLGCL's recipe (its optimizer, CE, augmentations) on the
        # labeled images alone, which tells the optimizer's share from the unlabeled terms'.
        Method('plgcl_labeled_only', 'acdc_plgcl', ("losses=('supervised',)",)),
        # Its upper bound: the same recipe with every training patient labeled (the SSL4MIS
        # fully supervised row keeps SSL4MIS's SGD recipe).
        Method('plgcl_fullysupervised', 'acdc_plgcl', ("losses=('supervised',)",
                                                       'data.labeled_num=70'), all_labeled=True),
        # A probe, not in the paper: the PLGCL term on the whole-image bottleneck pooled over each
        # cell (what the decoder reads) instead of the attended patches encoded on their own;
        # BUILD_NOTES.md, "Where the PLGCL term's learning goes".
        Method('plgcl_regions', 'acdc_plgcl',
               ('plgcl.embedding=regions', 'plgcl.assign=foreground')),
        Method('lclpl', 'acdc_lclpl'),
        Method('hu_block', 'acdc_hu_block'),
        # Controls, not in the papers, as plgcl_labeled_only: each method's supervised stage
        # (its optimizer, loss, batch and augmentations) alone for the whole budget, which
        # tells what its unlabeled stages add from what its recipe does.
        Method('lclpl_labeled_only', 'acdc_lclpl', ("stage_order=('supervised',)",),
               whole_budget=True),
        Method('hu_labeled_only', 'acdc_hu_block', ("stage_order=('finetune',)",),
               whole_budget=True),
    ),
}


@dataclasses.dataclass(frozen=True)
class Run:
  method: Method
  seed: int
  workdir: str

  @property
  def label(self) -> str:
    return f'{self.method.name} seed {self.seed}'

  def status(self) -> str:
    """'finished', 'partial' (a run directory to resume) or 'new'."""
    if os.path.isfile(os.path.join(self.workdir, 'results.json')):
      return 'finished'
    if os.path.isfile(os.path.join(self.workdir, 'config.json')):
      return 'partial'
    return 'new'


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise ConfigError(f'--seeds {text!r}: expected integers separated by commas, e.g. 0,1') from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f'--seeds {text!r}: expected distinct integers, e.g. 0,1')
  return seeds


def select_methods(suite: str, names: str | None) -> tuple[Method, ...]:
  if suite not in SUITES:
    raise ConfigError(f'--suite {suite!r}: unknown; known: {", ".join(SUITES)}')
  methods = SUITES[suite]
  if not names:
    return methods
  by_name = {m.name: m for m in methods}
  wanted = [n.strip() for n in names.split(',') if n.strip()]
  unknown = [n for n in wanted if n not in by_name]
  if unknown or not wanted:
    raise ConfigError(f'--methods: unknown {", ".join(unknown) or "(none given)"}; suite {suite} '
                      f'has: {", ".join(by_name)}')
  return tuple(by_name[n] for n in wanted)


def plan(methods, seeds, workdir: str) -> list[Run]:
  """Seed-major order: every method's first seed before any second seed."""
  return [Run(m, s, os.path.join(workdir, m.name, f'seed_{s}')) for s in seeds for m in methods]


def run_command(run: Run, args) -> list[str]:
  """The `jaxseg.run` command line that trains (or resumes) `run`."""
  cmd = [sys.executable, '-m', 'jaxseg.run', '--experiment', run.method.experiment,
         '--workdir', run.workdir]
  if args.data_dir:
    cmd += ['--data-dir', args.data_dir]
  if args.profile:
    cmd += ['--profile', args.profile]
  if args.labeled_num is not None and not run.method.all_labeled:
    cmd += ['--labeled-num', str(args.labeled_num)]
  steps = args.steps
  if steps is None and run.method.whole_budget:
    steps = config_lib.total_steps(
        config_lib.load_experiment(run.method.experiment, run_lib.resolve_profile(args)))
  if steps is not None:
    cmd += ['--steps', str(steps)]
  for override in (*run.method.overrides, *args.set, f'seed={run.seed}'):
    cmd += ['--set', override]
  if run.status() == 'partial':
    cmd.append('--resume')
  if args.no_progress:
    cmd.append('--no-progress')
  return cmd


# Settings a run may change between sittings without being another run.
_FREE_KEYS = ('data.dir', 'data.read_threads', 'mesh.', 'log_every', 'report', 'checkpoint.')


def _settings(config) -> dict:
  return {k: v for k, v in compare.flat_config(config).items()
          if not any(k == f or (f.endswith('.') and k.startswith(f)) for f in _FREE_KEYS)}


def check_settings(runs: list[Run], args) -> None:
  """Refuses to skip or resume a run made with other settings than this command asks for (a
  changed budget, profile or override would otherwise mix two protocols in one table)."""
  conflicts = []
  for run in runs:
    if run.status() == 'new':
      continue
    # As a fresh start would resolve it (a resume reads the saved config instead).
    argv = [a for a in run_command(run, args)[3:] if a != '--resume']
    requested, _ = run_lib.resolve_config(run_lib.parse_args(argv))
    saved = config_lib.read_run_config(run.workdir, resolve_stages=False)
    want, have = _settings(requested), _settings(saved)
    differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if differ:
      shown = ', '.join(f'{k} {have.get(k)!r} -> {want.get(k)!r}' for k in differ[:3])
      more = f' and {len(differ) - 3} more' if len(differ) > 3 else ''
      conflicts.append(f'{run.workdir} ({shown}{more})')
  if conflicts:
    raise ConfigError(f'{len(conflicts)} run(s) in {args.workdir} were made with other settings '
                      f'than this command: {"; ".join(conflicts)}; use another --workdir or the '
                      'same options (nothing was changed)')


def _duration(seconds: float) -> str:
  minutes, secs = divmod(int(round(seconds)), 60)
  return f'{minutes // 60}:{minutes % 60:02d}:{secs:02d}'


def train_all(runs: list[Run], args) -> list[tuple[Run, int]]:
  """Trains every unfinished run in turn; returns the runs that failed with their exit codes.

  A failed run (a diverged method, a crash) does not stop the others: it is reported at the end
  and retried by the next invocation, as a killed one is resumed.
  """
  failures = []
  todo = [r for r in runs if r.status() != 'finished']
  print(f'{len(runs)} runs: {len(runs) - len(todo)} finished, '
        f'{sum(r.status() == "partial" for r in todo)} to resume, '
        f'{sum(r.status() == "new" for r in todo)} to start', flush=True)
  started = time.time()
  for done, run in enumerate(todo):
    eta = ''
    if done:
      eta = f', about {_duration((time.time() - started) / done * (len(todo) - done))} left'
    action = 'resuming' if run.status() == 'partial' else 'starting'
    print(f'[{done + 1}/{len(todo)}] {action} {run.label} in {run.workdir}{eta}', flush=True)
    os.makedirs(os.path.dirname(run.workdir), exist_ok=True)
    code = subprocess.call(run_command(run, args))
    if code != 0:
      print(f'[{done + 1}/{len(todo)}] {run.label} failed (exit {code}); the other runs go on',
            flush=True)
      failures.append((run, code))
  return failures


def tables(runs: list[Run], output_prefix: str) -> dict[str, str]:
  """`compare`'s tables over the finished runs, one per split: 'val' always, 'test' when every
  run has it. Rows are the suite's method names; saved as <prefix>_<split>.md and .csv."""
  finished = [r for r in runs if r.status() == 'finished']
  if not finished:
    return {}
  out = {}
  results = {}
  for split in ('val', 'test'):
    try:
      results[split] = [compare.read_run(r.workdir, split) for r in finished]
    except JaxsegError:
      if split == 'val':
        raise
      continue  # no test split: validation only
    names = {r.workdir: r.method.name for r in finished}
    rows, class_names = compare.table_rows(results[split],
                                           label=lambda result: names[result.workdir])
    out[split] = compare.format_markdown(rows, class_names)
    with open(f'{output_prefix}_{split}.md', 'w') as f:
      f.write(out[split] + '\n')
    with open(f'{output_prefix}_{split}.csv', 'w') as f:
      f.write(compare.format_csv(rows, class_names))
  return out


# What a finished run's numbers and curves are read from (compare, report): small, unlike its
# checkpoints.
RECORD_FILES = ('config.json', 'results.json', 'metrics.jsonl')


def export_records(runs: list[Run], workdir: str, dest: str) -> int:
  """Copies the records of the finished runs to `dest`, laid out as a workdir; returns how many
  runs were copied. Refuses (before copying anything) where `dest` already holds a different file
  of the same name: an exported record is evidence and is never overwritten."""
  copies = []
  for run in runs:
    if run.status() != 'finished':
      continue
    target = os.path.join(dest, os.path.relpath(run.workdir, workdir))
    for name in RECORD_FILES:
      source, copy = os.path.join(run.workdir, name), os.path.join(target, name)
      if not os.path.isfile(source):
        continue  # metrics.jsonl is absent for runs made before it was written
      if not (os.path.exists(copy) and os.path.samefile(source, copy)):  # DIR is the workdir
        copies.append((source, copy))
  clashes = [t for s, t in copies if os.path.exists(t) and not filecmp.cmp(s, t, shallow=False)]
  if clashes:
    raise ConfigError(f'{clashes[0]}: already exported with other content '
                      f'({len(clashes)} file(s) differ); export to another folder '
                      '(nothing was copied)')
  for source, target in copies:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
  return len({os.path.dirname(t) for _, t in copies})


def parse_args(argv):
  parser = cli.parser('jaxseg.reproduce', __doc__)
  parser.add_argument('--suite', required=True, help=f'known: {", ".join(SUITES)}')
  parser.add_argument('--methods', help='comma-separated subset of the suite (default: all)')
  parser.add_argument('--seeds', default='0', help='comma-separated seeds (default: 0)')
  parser.add_argument('--workdir', required=True, help='one folder for the whole reproduction')
  parser.add_argument('--data-dir', default='', help='dataset folder; default: synthetic phantom')
  parser.add_argument('--labeled-num', type=int, help='labeled patients (not for fully supervised)')
  parser.add_argument('--profile', choices=('paper', 'quick', 'cpu'),
                      help='as jaxseg.run (default: paper with --data-dir, else cpu)')
  parser.add_argument('--steps', type=int,
                      help='training steps of every run (as jaxseg.run: with --profile quick, '
                           'the budget its schedules are scaled to)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='override a config value in every run')
  parser.add_argument('--no-progress', action='store_true', help='no progress bars')
  parser.add_argument('--table-only', action='store_true',
                      help='print the tables of the runs already finished; train nothing (e.g. '
                      'while another sitting is still training)')
  parser.add_argument('--export', metavar='DIR',
                      help='copy the finished runs\' records (config, results, training log; no '
                           'checkpoints) into DIR, laid out as --workdir; never overwrites')
  return parser.parse_args(argv)


@cli.command
def main(argv: list[str]) -> int:
  args = parse_args(argv)
  methods = select_methods(args.suite, args.methods)
  seeds = parse_seeds(args.seeds)
  if args.data_dir:
    args.data_dir = os.path.abspath(args.data_dir)
    if not os.path.isdir(args.data_dir):
      raise ConfigError(f'{args.data_dir}: --data-dir does not exist')
  runs = plan(methods, seeds, args.workdir)
  check_settings(runs, args)
  failures = []
  if not args.table_only:
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, 'reproduce.json'), 'w') as f:
      json.dump({'argv': argv, 'runs': [r.workdir for r in runs]}, f, indent=2)
    failures = train_all(runs, args)
  out = tables(runs, os.path.join(args.workdir, 'comparison'))
  for split, text in out.items():
    name = 'validation' if split == 'val' else 'test (best-validation checkpoints, reported only)'
    print(f'\n## {args.suite}: {name}\n\n{text}', flush=True)
  if args.export:
    count = export_records(runs, args.workdir, args.export)
    print(f'\nexported the records of {count} finished run(s) to {args.export}', flush=True)
  unfinished = [r for r in runs if r.status() != 'finished']
  if unfinished:
    print(f'\n{len(unfinished)} of {len(runs)} runs unfinished: '
          f'{", ".join(r.label for r in unfinished)}; run the same command again to continue',
          flush=True)
  return 1 if failures else 0  # the failed runs are named above, each with its exit status


if __name__ == '__main__':
  sys.exit(main())
