"""Evaluates a saved run: `python -m jaxseg.evaluate --workdir RUN [--data-dir PATH] [--split val|test]`.

Loads the run's config and its best checkpoint (or the latest with `--checkpoint latest`),
predicts every volume of the split slice by slice and prints the per-class Dice, Jaccard, HD95 and
ASD table, saving it as `eval_<split>.md` / `.json` in the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxseg import config as config_lib
from jaxseg.errors import DataError, JaxsegError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxseg.evaluate', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='run directory written by jaxseg.run')
  parser.add_argument('--data-dir', help='dataset folder (default: the one the run used)')
  parser.add_argument('--split', default='val', choices=('val', 'test'))
  parser.add_argument('--checkpoint', default='best', choices=('best', 'latest'))
  parser.add_argument('--units', choices=('voxels', 'mm'), help='distance units (default: config)')
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config = config_lib.read_run_config(args.workdir)
    with config.unlocked():
      if args.data_dir:
        config.data.dir = os.path.abspath(args.data_dir)
      if args.units:
        config.eval.units = args.units
    # Imports JAX: after the arguments are checked.
    from jaxseg.data import datasets
    from jaxseg.evaluation import metrics
    from jaxseg.models import build_model
    from jaxseg.evaluation.inference import evaluate_split, make_logits_fn
    from jaxseg.training import checkpoint, rundir, schedules, step as step_lib

    data = datasets.load_data(config)
    if args.split not in data.splits:
      raise DataError(f'{config.data.dir or "synthetic"}: no {args.split} split in this dataset')
    model = build_model(config)
    template = step_lib.abstract_state(model, schedules.optimizer(config), config)
    ckpts = checkpoint.Checkpoints.of_finished_run(args.workdir)
    state, _, meta = ckpts.restore(args.checkpoint, template)
    volumes = data.splits[args.split]
    per_volume, summary = evaluate_split(make_logits_fn(model)(state), volumes, config,
                                              progress=not args.no_progress)
    table = metrics.format_table(summary, config.class_names, units=config.eval.units)
    text = (f'# {config.experiment}: {args.checkpoint} checkpoint (step {meta["step"]}), '
            f'{args.split} split, {len(volumes)} volumes\n\n{table}\n')
    print(text)
    with open(os.path.join(args.workdir, f'eval_{args.split}.md'), 'w') as f:
      f.write(text)
    with open(os.path.join(args.workdir, f'eval_{args.split}.json'), 'w') as f:
      json.dump({'step': meta['step'], 'summary': summary, 'per_volume': per_volume}, f,
                indent=2, default=rundir.jsonable)
    ckpts.close()
  except JaxsegError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  # Launched as several processes (SLURM, mpirun, a TPU pod): process 0 alone works.
  from jaxseg.training import distributed  # noqa: PLC0415 (JAX: after the module loads)
  sys.exit(distributed.main_only(main))
