"""Steps per second of a short training run with the real data pipeline, and the pipeline's rate.

  python benchmarks/train_rate.py                              # acdc_meanteacher, paper profile
  python benchmarks/train_rate.py --experiment la_dualstream --steps 20
  python benchmarks/train_rate.py --size 32 --steps 4 --set model.channels=(4,8,16)

The inner loop of `jaxseg.training.loop.train_and_evaluate` (next paired batch, place it on the
mesh, the jitted step, fetch the metrics), without validation and checkpoints: what the training
run's steps/s is made of. The first step (compilation) is timed apart; of the rest it reports
steps/s, the share of the time spent waiting for data, and, measured alone before training, the
pipeline's paired batches/s with the ratio to the steps/s (it should be 3 or more). Without
--data-dir the experiment reads the synthetic phantom at the paper's size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import machine_info  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg.data import datasets, pipeline  # noqa: E402
from jaxseg.errors import JaxsegError  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.training import schedules  # noqa: E402
from jaxseg.training import step as step_lib  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--experiment', default='acdc_meanteacher')
  p.add_argument('--data-dir', default='', help='real data (default: the phantom)')
  p.add_argument('--steps', type=int, default=50, help='timed training steps after the first')
  p.add_argument('--pipeline-batches', type=int, default=20,
                 help='paired batches timed for the pipeline alone')
  p.add_argument('--size', type=int, default=0, help='override data.image_size (2D)')
  p.add_argument('--crop', default='', help='override data.crop_shape D,H,W (3D)')
  p.add_argument('--batch', default='', metavar='L,U', help='override the batch sizes')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--json', default='', metavar='OUT.json')
  return p.parse_args(argv)


def make_config(args):
  config = config_lib.load_experiment(args.experiment, 'paper')
  with config.unlocked():
    config.data.dir = args.data_dir
    config.mesh.num_devices = 1
    if args.size:
      config.data.image_size = args.size
    if args.crop:
      config.data.crop_shape = tuple(int(v) for v in args.crop.split(','))
    if args.batch:
      config.data.labeled_batch, config.data.unlabeled_batch = (
          int(v) for v in args.batch.split(','))
    if not args.data_dir:  # the phantom at the size the experiment trains at
      config.data.synthetic.size = config.data.image_size
      crop = tuple(config.data.crop_shape)
      config.data.synthetic3d.update(size=max(crop) + 16 if crop else 48, num_train=8,
                                     num_val=1, num_test=1)
      config.data.labeled_num = min(config.data.labeled_num, 4)
  config_lib.apply_overrides(config, args.set)
  return config


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config = make_config(args)
    t = time.perf_counter()
    data = datasets.load_data(config)
    load_s = time.perf_counter() - t
    model, tx = build_model(config), schedules.optimizer(config)
    train_step = step_lib.make_train_step(model, tx, config)
    streams = step_lib.streams(config)
    mesh = step_lib.make_mesh(1)
    jitted = step_lib.jit_train_step(train_step, mesh)
    state = step_lib.replicate(step_lib.init_state(model, tx, config), mesh)
  except JaxsegError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  make_iterator = lambda: pipeline.make_train_iterator(data, config, streams.unlabeled,
                                                       streams.labeled)

  # The pipeline alone (a fresh iterator: its prefetch starts empty, as training's does).
  batches = make_iterator()
  next(batches)
  t = time.perf_counter()
  for _ in range(args.pipeline_batches):
    next(batches)
  pipeline_rate = args.pipeline_batches / (time.perf_counter() - t)
  del batches

  batches = make_iterator()

  def one_step(state):
    t = time.perf_counter()
    labeled, unlabeled = next(batches)
    waited = time.perf_counter() - t
    state, metrics = jitted(state, step_lib.shard_batch(labeled, mesh),
                            step_lib.shard_batch(unlabeled, mesh))
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics['loss']):
      raise FloatingPointError(f'non-finite loss {metrics["loss"]}')
    return state, waited, float(metrics['loss'])

  t = time.perf_counter()
  state, _, loss = one_step(state)
  first_s = time.perf_counter() - t
  wait = 0.0
  t = time.perf_counter()
  for _ in range(args.steps):
    state, waited, loss = one_step(state)
    wait += waited
  wall = time.perf_counter() - t
  steps_per_s = args.steps / wall
  d = config.data
  shape = tuple(d.crop_shape) or (d.image_size, d.image_size)
  result = {
      'machine': machine_info(1), 'experiment': config.experiment, 'data': data.layout,
      'shape': list(shape), 'labeled_batch': d.labeled_batch,
      'unlabeled_batch': d.unlabeled_batch if streams.unlabeled else 0,
      'dtype': config.model.get('dtype', 'float32'), 'read_threads': d.read_threads,
      'load_s': load_s, 'first_step_s': first_s, 'steps': args.steps, 'wall_s': wall,
      'steps_per_s': steps_per_s, 'data_wait_fraction': wait / wall,
      'pipeline_batches_per_s': pipeline_rate, 'pipeline_over_step': pipeline_rate / steps_per_s,
      'final_loss': loss}
  m = result['machine']
  print(f"machine: {m['device_kind']} ({m['platform']}); CPU {m['cpu']}, {m['cpu_count']} cores; "
        f"jax {m['jax']}")
  batch = f"{result['labeled_batch']}+{result['unlabeled_batch']}"
  print(f"{config.experiment} on {data.layout}, {'x'.join(map(str, shape))}, batch {batch}, "
        f"dtype {result['dtype']}, read_threads {d.read_threads}")
  print(f"data load {load_s:.1f} s; first step (compile) {first_s:.1f} s; {args.steps} steps: "
        f"{steps_per_s:.2f} steps/s, {100 * wait / wall:.0f}% waiting for data; pipeline alone "
        f"{pipeline_rate:.2f} batches/s = {pipeline_rate / steps_per_s:.1f}x the step rate; "
        f"loss {loss:.4f}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
