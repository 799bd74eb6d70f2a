"""Evaluates a saved run: `python -m jaxseg.evaluate --workdir RUN [--data-dir PATH] [--split val|test]`.

Loads the run's config and its best checkpoint (or the last with `--checkpoint last`, or a step),
predicts every volume of the split slice by slice and prints the per-class Dice, Jaccard, HD95 and
ASD table, saving it as `eval_<split>.md` / `.json` in the run directory.
"""

from __future__ import annotations

import json
import os
import sys

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import datasets
from jaxseg.errors import DataError
from jaxseg.evaluation import metrics
from jaxseg.evaluation.inference import evaluate_split
from jaxseg.training import distributed, rundir, runs


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.parser('jaxseg.evaluate', __doc__, run_dir=True)
  parser.add_argument('--data-dir', help='dataset folder (default: the one the run used)')
  parser.add_argument('--split', default='val', choices=('val', 'test'))
  parser.add_argument('--checkpoint', default='best', help='best (default), last, or a step')
  parser.add_argument('--units', choices=('voxels', 'mm'), help='distance units (default: config)')
  args = parser.parse_args(argv)
  config = config_lib.read_run_config(args.workdir)
  with config.unlocked():
    if args.data_dir:
      config.data.dir = os.path.abspath(args.data_dir)
    if args.units:
      config.eval.units = args.units
  data = datasets.load_data(config)
  if args.split not in data.splits:
    raise DataError(f'{config.data.dir or "synthetic"}: no {args.split} split in this dataset')
  run = runs.open_run(args.workdir, args.checkpoint, config=config)
  volumes = data.splits[args.split]
  per_volume, summary = evaluate_split(run.logits_fn, volumes, config,
                                       progress=not args.no_progress)
  table = metrics.format_table(summary, config.class_names, units=config.eval.units)
  text = (f'# {config.experiment}: {args.checkpoint} checkpoint (step {run.step}), '
          f'{args.split} split, {len(volumes)} volumes\n\n{table}\n')
  print(text)
  with open(os.path.join(args.workdir, f'eval_{args.split}.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(args.workdir, f'eval_{args.split}.json'), 'w') as f:
    json.dump({'step': run.step, 'summary': summary, 'per_volume': per_volume}, f,
              indent=2, default=rundir.jsonable)
  return 0


if __name__ == '__main__':
  # Launched as several processes (SLURM, mpirun, a TPU pod): process 0 alone works.
  sys.exit(distributed.main_only(main))
