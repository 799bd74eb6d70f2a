"""Command line: `python -m jaxseg.run --experiment NAME [--data-dir PATH] [options]`.

Parses, resolves the experiment's config and calls `train_and_report`: training
(`training.loop.train_and_evaluate`), then the run's report (`jaxseg.report`). Without
`--data-dir` the experiment runs its CPU-sized profile on the built-in synthetic phantom.

Several processes (one per host) train one run when launched by SLURM, Open MPI or on a TPU
pod (detected by `jax.distributed`), or with `--coordinator HOST:PORT --num-processes N
--process-id I` given to each; see README "Several machines".
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import traceback

import numpy as np

from jaxseg import cli, report
from jaxseg import config as config_lib
from jaxseg.data import datasets
from jaxseg.errors import ConfigError, JaxsegError
from jaxseg.training import distributed, loop, rundir


def parse_args(argv):
  parser = cli.parser('jaxseg.run', __doc__)
  parser.add_argument('--experiment', required=True,
                      help=f'experiments/NAME.py or a path; known: {", ".join(config_lib.list_experiments())}')
  parser.add_argument('--data-dir', default='', help='dataset folder; default: synthetic phantom')
  parser.add_argument('--labeled-num', type=int, help='labeled patients (ACDC) or volumes')
  parser.add_argument('--profile', choices=PROFILES,
                      help='paper: the published protocol (default with --data-dir); quick: the '
                           'reduced real-data protocol shared by the 2D ACDC methods; cpu: the '
                           'synthetic phantom (default without --data-dir)')
  parser.add_argument('--steps', type=int,
                      help='training steps; with --profile quick the budget of its protocol, '
                           'every schedule scaled to it by the profile\'s rule; with --resume, '
                           'the total to extend a finished run to')
  parser.add_argument('--workdir', help='run directory (default: runs/EXPERIMENT-TIMESTAMP)')
  parser.add_argument('--resume', action='store_true', help='continue the run in --workdir')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='override a config value, e.g. --set optimizer.lr=0.001')
  parser.add_argument('--no-progress', action='store_true', help='no progress bars')
  parser.add_argument('--folds', type=int, default=0, metavar='K',
                      help='K-fold cross-validation (LA, pancreas): trains every fold in '
                           'WORKDIR/fold_i and summarizes them in WORKDIR/folds.md')
  group = parser.add_argument_group(
      'several processes', 'one process per host; without these, jax.distributed detects SLURM, '
      'Open MPI and TPU pods by itself')
  group.add_argument('--coordinator', metavar='HOST:PORT',
                     help="process 0's address, the same for every process")
  group.add_argument('--num-processes', type=int, metavar='N', help='how many processes in all')
  group.add_argument('--process-id', type=int, metavar='I', help='this process, 0 .. N-1')
  return parser.parse_args(argv)


PROFILES = ('paper', 'quick', 'cpu')


def resolve_profile(args) -> str:
  """'paper' on real data and 'cpu' on the phantom unless asked; the real-data profiles need data
  and the phantom profile refuses it (it would silently train on the phantom)."""
  profile = args.profile or ('paper' if args.data_dir else 'cpu')
  if profile != 'cpu' and not args.data_dir:
    raise ConfigError(f'--profile {profile} is a real-data protocol: give --data-dir')
  if profile == 'cpu' and args.data_dir:
    raise ConfigError('--profile cpu trains on the synthetic phantom: drop --data-dir, or use '
                      '--profile paper or quick')
  return profile


def resolve_config(args):
  profile = resolve_profile(args)
  # With the quick profile --steps is the profile's budget (schedules scaled to it); with the
  # others it is the step count alone, the schedules staying the protocol's.
  quick_steps = args.steps if profile == 'quick' and not args.resume else None
  config = config_lib.load_experiment(args.experiment, profile, quick_steps=quick_steps)
  config_lib.apply_overrides(config, args.set)
  with config.unlocked():
    if args.data_dir:
      config.data.dir = os.path.abspath(args.data_dir)
    if args.labeled_num is not None:
      config.data.labeled_num = args.labeled_num
    if args.steps is not None and not args.resume:  # a resume reads the run's own steps
      config_lib.set_total_steps(config, args.steps)
  return config, profile


def train_and_report(config, workdir: str, *, resume: bool = False, progress: bool = True,
                     steps: int | None = None) -> dict:
  """Trains `config` in `workdir` (`train_and_evaluate`, same arguments), then writes the run's
  report when `config.report` is on and the report is not already newer than the run's results
  (a finished run resumed with nothing to train keeps the report it has). Process 0 alone writes
  it; a figure that cannot be drawn never fails a finished run."""
  results = loop.train_and_evaluate(config, workdir, resume=resume, progress=progress,
                                    steps=steps)
  # A resume trains with the run's saved config: its `report` decides.
  if (distributed.is_main() and config_lib.read_run_config(workdir, resolve_stages=False).report
      and not report_is_current(workdir)):
    try:
      print(f'report: {report.write_report(workdir, progress=progress)}', flush=True)
    except Exception as e:  # noqa: BLE001 (training is done and saved; say why and go on)
      print(f'warning: {workdir}: report not written ({type(e).__name__}: {e}); retry with '
            f'python -m jaxseg.report --workdir {workdir}', flush=True)
  return results


def report_is_current(workdir: str) -> bool:
  """The report was written after the run's results were (nothing trained since)."""
  try:
    return (os.path.getmtime(os.path.join(workdir, 'report', 'report.md'))
            >= os.path.getmtime(os.path.join(workdir, 'results.json')))
  except OSError:  # either is missing
    return False


def train_folds(config, workdir: str, folds: int, *, resume: bool, progress: bool,
                steps: int | None = None) -> dict:
  """Trains fold i of K in `workdir/fold_i` and writes the mean and standard deviation over folds
  of each fold's mean validation Dice.

  One process holds `workdir` while it trains. `workdir/config.json` keeps the folds' common
  config, which a resume reads (as a single run's); each fold is a run directory of its own,
  resumed like any run: a finished fold is left as it is, unless `steps` (--steps given with
  --resume) extends every fold.
  """
  layout = datasets.detect_layout(config.data.dir)
  if layout not in ('la', 'pancreas'):
    raise ConfigError(f'--folds: K-fold splits exist for the LA and pancreas layouts, not {layout}')
  config = datasets.resolve_config(config)  # the folds' config.json: this dataset's block only
  if resume and rundir.is_empty(workdir):
    raise ConfigError(f'{workdir}: nothing to resume (no run directory there)')
  # The lock (and, for a new run, an empty folder); folds made before config.json was kept here
  # resume with the command line's config.
  if resume:
    rundir.check_lock(workdir)
  else:
    rundir.check(workdir, resume=False)
  if resume and os.path.isfile(os.path.join(workdir, 'config.json')):
    data_dir = config.data.dir
    config = config_lib.read_run_config(workdir, resolve_stages=False)
    with config.unlocked():
      config.data.dir = data_dir
  os.makedirs(workdir, exist_ok=True)
  with rundir.hold(workdir):
    if not resume:
      rundir.write_text(os.path.join(workdir, 'config.json'), config_lib.to_json(config))
    dice = []
    for fold in range(folds):
      fold_dir = os.path.join(workdir, f'fold_{fold}')
      fold_config = config_lib.from_json(config_lib.to_json(config))
      with fold_config.unlocked():
        fold_config.data.folds, fold_config.data.fold = folds, fold
      print(f'fold {fold + 1} of {folds}: {fold_dir}', flush=True)
      # A fold stopped before it wrote its config starts again.
      started = os.path.isfile(os.path.join(fold_dir, 'config.json'))
      if not started and os.path.isdir(fold_dir):
        shutil.rmtree(fold_dir)
      results = train_and_report(fold_config, fold_dir, resume=started, progress=progress,
                                 steps=steps)
      means = results['splits']['val']['summary']['dice']['mean']
      dice.append(float(np.nanmean(np.asarray(means, dtype=float))))
    return write_fold_summary(config, workdir, dice)


def write_fold_summary(config, workdir: str, dice: list[float]) -> dict:
  lines = [f'# {config.experiment}: {len(dice)}-fold cross-validation', '',
           '| fold | mean validation Dice (best checkpoint) |', '|---:|---:|']
  lines += [f'| {i} | {d:.4f} |' for i, d in enumerate(dice)]
  lines += ['', f'mean ± std over folds: {np.mean(dice):.4f} ± {np.std(dice):.4f}']
  text = '\n'.join(lines)
  print(text, flush=True)
  rundir.write_text(os.path.join(workdir, 'folds.md'), text + '\n')
  summary = {'dice': dice, 'mean': float(np.mean(dice)), 'std': float(np.std(dice))}
  rundir.write_json(os.path.join(workdir, 'folds.json'), summary)
  return summary


@cli.command
def main(argv: list[str]) -> int:
  args = parse_args(argv)
  joined = False  # whether this process has joined the others (if any)
  try:
    config, profile = resolve_config(args)
    if args.resume and not args.workdir:
      raise JaxsegError('--resume needs --workdir (the run directory to continue)')
    # Joins the other processes, if any, before anything touches a device.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    joined = True
    if args.folds and distributed.is_multiprocess():
      raise ConfigError('--folds trains on one process; launch it as a single process')
    # One run directory for all processes: process 0's clock names it.
    workdir = distributed.on_main('workdir', lambda: args.workdir or os.path.join(
        'runs', f'{config.experiment}-{datetime.datetime.now():%Y%m%d-%H%M%S}'))
    if profile == 'cpu' and not args.resume:
      shape = (tuple(config.data.crop_shape) if config.data.crop_shape
               else (config.data.image_size,) * 2)
      print(f'No --data-dir: running {config.experiment} on the built-in synthetic '
            f'{len(shape)}D phantom with its CPU profile ({config_lib.total_steps(config)} steps '
            f'at {"x".join(map(str, shape))}).',
            flush=True)
    print(f'run directory: {workdir}', flush=True)
    steps = args.steps if args.resume else None
    with rundir.storage_errors(workdir):
      if args.folds:
        train_folds(config, workdir, args.folds, resume=args.resume,
                    progress=not args.no_progress, steps=steps)
      else:
        train_and_report(config, workdir, resume=args.resume, progress=not args.no_progress,
                         steps=steps)
  except BaseException as e:
    if joined and distributed.is_multiprocess():
      # The other processes stop too, with this one's message (abort ends the process).
      if isinstance(e, JaxsegError):
        cli.print_error(e)
        distributed.abort(str(e))  # ends the process with exit status 2
      else:
        traceback.print_exc()
        distributed.abort(f'{type(e).__name__}: {e}', code=1)
    raise  # one process: a JaxsegError is cli.command's one line
  distributed.finish()
  return 0


if __name__ == '__main__':
  sys.exit(main())
