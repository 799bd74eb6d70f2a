"""Command line: `python -m jaxseg.run --experiment NAME [--data-dir PATH] [options]`.

Parses, resolves the experiment's config and calls `train_and_evaluate`. Without `--data-dir`
the experiment runs its CPU-sized profile on the built-in synthetic phantom.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m jaxseg.run', description=__doc__.split('\n')[0])
  parser.add_argument('--experiment', required=True,
                      help=f'experiments/NAME.py or a path; known: {", ".join(config_lib.list_experiments())}')
  parser.add_argument('--data-dir', default='', help='dataset folder; default: synthetic phantom')
  parser.add_argument('--labeled-num', type=int, help='labeled patients (ACDC) or volumes')
  parser.add_argument('--steps', type=int, help='training steps')
  parser.add_argument('--workdir', help='run directory (default: runs/EXPERIMENT-TIMESTAMP)')
  parser.add_argument('--resume', action='store_true', help='continue the run in --workdir')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='override a config value, e.g. --set optimizer.lr=0.001')
  parser.add_argument('--no-progress', action='store_true', help='no progress bars')
  return parser.parse_args(argv)


def resolve_config(args):
  profile = 'paper' if args.data_dir else 'cpu'
  config = config_lib.load_experiment(args.experiment, profile)
  config_lib.apply_overrides(config, args.set)
  with config.unlocked():
    if args.data_dir:
      config.data.dir = os.path.abspath(args.data_dir)
    if args.labeled_num is not None:
      config.data.labeled_num = args.labeled_num
    if args.steps is not None:
      config_lib.set_total_steps(config, args.steps)
  return config, profile


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config, profile = resolve_config(args)
    if args.resume and not args.workdir:
      raise JaxsegError('--resume needs --workdir (the run directory to continue)')
    workdir = args.workdir or os.path.join(
        'runs', f'{config.experiment}-{datetime.datetime.now():%Y%m%d-%H%M%S}')
    if profile == 'cpu':
      shape = (tuple(config.data.crop_shape) if config.data.crop_shape
               else (config.data.image_size,) * 2)
      print(f'No --data-dir: running {config.experiment} on the built-in synthetic '
            f'{len(shape)}D phantom with its CPU profile ({config_lib.total_steps(config)} steps '
            f'at {"x".join(map(str, shape))}).',
            flush=True)
    print(f'run directory: {workdir}', flush=True)
    from jaxseg.training.loop import train_and_evaluate  # imports JAX: after argument checks
    train_and_evaluate(config, workdir, resume=args.resume, progress=not args.no_progress)
  except JaxsegError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
