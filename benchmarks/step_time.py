"""Times the one jitted train step (supervised and mean teacher) on synthetic batches.

  python benchmarks/step_time.py                      # paper setting: 256x256, 12 + 12 images
  python benchmarks/step_time.py --size 128 --labeled 4 --unlabeled 4 --repeats 3

Measures only `make_train_step` jitted by `jit_train_step` under `make_mesh`: random numpy
batches are placed on the mesh once and fed every step (no data pipeline). For each step it
reports compile time (lower + compile), the median and interquartile range of the wall time per
step, images/s (labeled + unlabeled inputs), XLA's memory analysis and FLOPs. Memory and FLOPs
are XLA's figures for the compiled per-device program. No persistent compilation cache is set,
so the compile time is a cold compile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Run as `python benchmarks/step_time.py`, sys.path[0] is benchmarks/: put the repo root first
# so this checkout's jaxseg is the one benchmarked, installed or not.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import MIB, compile_step, machine_info, time_train_steps  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg.errors import JaxsegError  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.training import schedules  # noqa: E402
from jaxseg.training import step as step_lib  # noqa: E402

# Benchmark name -> (experiment, config overrides). PLGCL is measured with per-class keys (the
# default: 4 x 64 attended patches through the encoder), one key per grid cell (all B * P patches
# through the encoder), and the cheaper pooling of full-image features (one key per cell).
STEPS = {
    'supervised': ('acdc_supervised', []),
    'mean_teacher': ('acdc_meanteacher', []),
    'plgcl': ('acdc_plgcl', []),
    'plgcl_dominant': ('acdc_plgcl', ['plgcl.assign=dominant']),
    'plgcl_regions': ('acdc_plgcl', ['plgcl.embedding=regions', 'plgcl.assign=dominant']),
}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', type=int, default=256, help='image height and width')
  p.add_argument('--labeled', type=int, default=12, help='labeled images per step')
  p.add_argument('--unlabeled', type=int, default=12,
                 help='unlabeled images per step (steps that use them)')
  p.add_argument('--repeats', type=int, default=20, help='timed steps')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps before timing')
  p.add_argument('--steps', default='supervised,mean_teacher',
                 help=f'comma-separated; known: {", ".join(STEPS)}')
  p.add_argument('--devices', type=int, default=0, help='mesh size (default: all devices)')
  p.add_argument('--json', default='', metavar='OUT.json', help='also write the results here')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every step, e.g. model.dtype=bfloat16 (repeatable)')
  args = p.parse_args(argv)
  args.steps = [s.strip() for s in args.steps.split(',') if s.strip()]
  unknown = [s for s in args.steps if s not in STEPS]
  if unknown:
    p.error(f'--steps: unknown {unknown}; known: {", ".join(STEPS)}')
  if args.repeats < 1 or args.warmup < 0:
    p.error('--repeats must be >= 1 and --warmup >= 0')
  return args


def make_config(name: str, args):
  experiment, overrides = STEPS[name]
  config = config_lib.load_experiment(experiment, 'paper')
  config_lib.apply_overrides(config, overrides + args.set)
  with config.unlocked():
    config.data.image_size = args.size
    config.data.labeled_batch = args.labeled
    config.data.unlabeled_batch = args.unlabeled
    config.mesh.num_devices = args.devices
  return config


def synthetic_batches(config, with_unlabeled: bool, seed: int):
  """Host batches with the pipeline's keys and dtypes; values do not change the step's cost."""
  rng = np.random.default_rng(seed)
  s, b = config.data.image_size, config.data.labeled_batch
  labeled = {'image': rng.random((b, s, s), dtype=np.float32),
             'label': rng.integers(0, config.num_classes, (b, s, s), dtype=np.int32)}
  if not with_unlabeled:
    return labeled, None
  u = config.data.unlabeled_batch
  unlabeled = {'image_weak': rng.random((u, s, s), dtype=np.float32),
               'image_strong': rng.random((u, s, s), dtype=np.float32)}
  return labeled, unlabeled


def bench_step(name: str, args, mesh) -> dict:
  config = make_config(name, args)
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  streams = step_lib.streams(config)
  step_lib.check_batch_divisible(config, mesh, streams.unlabeled)
  jitted = step_lib.jit_train_step(train_step, mesh)

  t = time.perf_counter()
  state = step_lib.replicate(step_lib.init_state(model, tx, config), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  labeled, unlabeled = synthetic_batches(config, streams.unlabeled, args.seed)
  labeled = step_lib.shard_batch(labeled, mesh)
  unlabeled = step_lib.shard_batch(unlabeled, mesh)

  built = compile_step(jitted, state, labeled, unlabeled)
  compiled, lower_s, compile_s, flops = (built.pop(k) for k in
                                         ('compiled', 'lower_s', 'compile_s', 'flops'))
  memory = built

  times, metrics = time_train_steps(compiled, state, labeled, unlabeled, args.warmup,
                                    args.repeats)
  loss = float(jax.device_get(metrics['loss']))

  times_ms = np.asarray(times) * 1e3
  median = float(np.median(times_ms))
  q25, q75 = (float(q) for q in np.percentile(times_ms, [25, 75]))
  images = args.labeled + (args.unlabeled if streams.unlabeled else 0)
  return {
      'step': name, 'experiment': config.experiment, 'losses': list(config.losses),
      'labeled': args.labeled, 'unlabeled': args.unlabeled if streams.unlabeled else 0,
      'images_per_step': images, 'size': args.size,
      'init_s': init_s, 'lower_s': lower_s, 'compile_only_s': compile_s,
      'compile_s': lower_s + compile_s,
      'median_ms': median, 'q25_ms': q25, 'q75_ms': q75, 'iqr_ms': q75 - q25,
      'min_ms': float(times_ms.min()), 'max_ms': float(times_ms.max()),
      'times_ms': times_ms.tolist(), 'steps_per_s': 1e3 / median,
      'images_per_s': images * 1e3 / median, 'flops': flops, 'final_loss': loss, **memory}


def mib(x):
  return '-' if x is None else f'{x / MIB:.1f}'


def format_table(machine: dict, args, results: list[dict]) -> str:
  lines = [
      f"machine: {machine['device_kind']} ({machine['platform']}) x{machine['device_count']}, "
      f"mesh {machine['mesh_devices']}; CPU {machine['cpu']}, {machine['cpu_count']} cores; "
      f"jax {machine['jax']}",
      f'setting: {args.size}x{args.size}, warmup {args.warmup}, repeats {args.repeats}; '
      'memory and FLOPs per device (XLA compiled analysis)'
      + (f"; --set {' '.join(args.set)}" if args.set else ''),
      '',
      '| step | batch | compile s | median ms | IQR ms | img/s | temp MiB | args MiB | GFLOPs |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in results:
    batch = f"{r['labeled']}+{r['unlabeled']}" if r['unlabeled'] else f"{r['labeled']}"
    gflops = '-' if r['flops'] is None else f"{r['flops'] / 1e9:.1f}"
    lines.append(
        f"| {r['step']} | {batch} | {r['compile_s']:.1f} | {r['median_ms']:.1f} | "
        f"{r['iqr_ms']:.1f} | {r['images_per_s']:.1f} | {mib(r['temp_size_in_bytes'])} | "
        f"{mib(r['argument_size_in_bytes'])} | {gflops} |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    mesh = step_lib.make_mesh(args.devices)
    machine = machine_info(mesh.shape['data'])
    results = []
    for name in args.steps:
      print(f'{name}: compiling and timing...', file=sys.stderr, flush=True)
      results.append(bench_step(name, args, mesh))
  except JaxsegError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(format_table(machine, args, results))
  for r in results:
    print(f"{r['step']}: {r['steps_per_s']:.2f} steps/s, init {r['init_s']:.1f} s, "
          f"lower {r['lower_s']:.1f} s + compile {r['compile_only_s']:.1f} s; "
          f"out {mib(r['output_size_in_bytes'])} MiB, alias {mib(r['alias_size_in_bytes'])} MiB; "
          f"loss {r['final_loss']:.4f}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'machine': machine, 'args': vars(args), 'results': results}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
