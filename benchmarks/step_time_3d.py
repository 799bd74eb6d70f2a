"""Step time, compiled memory and FLOPs of the 3D DualStream (V-Net + ResNet-34) train step.

  python benchmarks/step_time_3d.py                       # paper: 112x112x80, 2 + 2 volumes
  python benchmarks/step_time_3d.py --crop 96,96,96       # the Pancreas crop
  python benchmarks/step_time_3d.py --repeats 0           # compile and analyse only

The step is `make_train_step` jitted by `jit_train_step` with the supervised loss on the
labeled volumes; `--unlabeled` volumes also go through the student forward (and backward), as in
the dual-stream method, by a zero-weight loss term registered here, so the measured forward is
labeled + unlabeled volumes, the method's. `--losses` can name further registered terms (e.g.
the method's own). Random batches are placed once and reused (no data pipeline). Memory and
FLOPs are XLA's figures for the compiled per-device program; compile time is cold (no cache).
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

from common import MIB, compile_step, machine_info, time_train_steps  # noqa: E402
from jaxseg import config as config_lib, methods  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.methods.term import LossTerm  # noqa: E402
from jaxseg.training import schedules  # noqa: E402
from jaxseg.training import step as step_lib  # noqa: E402


def _unlabeled_forward(out, config):
  # Zero that still depends on the unlabeled outputs, so XLA keeps their forward and backward.
  del config
  return 0.0 * out.student_unlabeled['logits'].mean(), {}


# The table of terms with this benchmark's own one added.
TERMS = {**methods.TERMS, 'bench_unlabeled_forward': LossTerm(
    'bench_unlabeled_forward', _unlabeled_forward, dict, needs_unlabeled=True)}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--crop', default='112,112,80', help='D,H,W of one input volume')
  p.add_argument('--labeled', type=int, default=2)
  p.add_argument('--unlabeled', type=int, default=2, help='0: labeled forward only')
  p.add_argument('--subnets', default='vnet,resnet3d')
  p.add_argument('--base-filters', type=int, default=16)
  p.add_argument('--losses', default='supervised', help='comma-separated registered terms')
  p.add_argument('--repeats', type=int, default=2, help='timed steps (0: compile only)')
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override, e.g. model.dtype=bfloat16 (repeatable)')
  p.add_argument('--json', default='', metavar='OUT.json')
  args = p.parse_args(argv)
  args.crop = tuple(int(v) for v in args.crop.split(','))
  return args


def make_config(args):
  losses = [s for s in args.losses.split(',') if s]
  if args.unlabeled and 'bench_unlabeled_forward' not in losses:
    losses.append('bench_unlabeled_forward')
  # The config blocks of the table's terms; the benchmark's own term has none.
  c = config_lib.base_config(losses=tuple(n for n in losses if n in methods.TERMS))
  c.losses = tuple(losses)
  c.num_classes = 2
  c.class_names = ('foreground',)
  c.data.crop_shape = args.crop
  c.data.labeled_batch = args.labeled
  c.data.unlabeled_batch = max(args.unlabeled, 1)
  c.model.name = 'dualstream'
  c.model.subnets = tuple(args.subnets.split(','))
  c.model.base_filters = args.base_filters
  c.mesh.num_devices = 1
  config_lib.apply_overrides(c, args.set)
  return c


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  config = make_config(args)
  mesh = step_lib.make_mesh(1)
  model = build_model(config)
  tx = schedules.optimizer(config)
  terms = methods.resolve(tuple(config.losses), TERMS)
  train_step = step_lib.make_train_step(model, tx, config, terms)
  jitted = step_lib.jit_train_step(train_step, mesh)

  t = time.perf_counter()
  state = jax.block_until_ready(
      step_lib.replicate(step_lib.init_state(model, tx, config, terms), mesh))
  init_s = time.perf_counter() - t
  params = sum(x.size for x in jax.tree.leaves(state.params))
  rng = np.random.default_rng(0)
  labeled = {'image': rng.random((args.labeled, *args.crop), dtype=np.float32),
             'label': rng.integers(0, 2, (args.labeled, *args.crop), dtype=np.int32)}
  unlabeled = None
  if step_lib.streams(config, terms).unlabeled:
    u = rng.random((config.data.unlabeled_batch, *args.crop), dtype=np.float32)
    unlabeled = {'image_weak': u, 'image_strong': u}
  labeled, unlabeled = step_lib.shard_batch(labeled, mesh), step_lib.shard_batch(unlabeled, mesh)

  built = compile_step(jitted, state, labeled, unlabeled)
  compiled, flops = built.pop('compiled'), built.pop('flops')
  compile_s = built.pop('lower_s') + built.pop('compile_s')
  memory = built

  times, metrics = time_train_steps(compiled, state, labeled, unlabeled, args.warmup,
                                    args.repeats)
  loss = float(jax.device_get(metrics['loss'])) if metrics is not None else None
  result = {
      'machine': machine_info(1), 'crop': args.crop, 'subnets': config.model.subnets,
      'labeled': args.labeled, 'unlabeled': args.unlabeled, 'losses': list(config.losses),
      'params': int(params), 'init_s': init_s, 'compile_s': compile_s, 'flops': flops,
      'times_s': times, 'median_s': float(np.median(times)) if times else None,
      'final_loss': loss, **memory}
  m = result['machine']
  print(f"machine: {m['device_kind']} ({m['platform']}); CPU {m['cpu']}, {m['cpu_count']} cores; "
        f"jax {m['jax']}")
  print(f"DualStream {'+'.join(config.model.subnets)} ({params / 1e6:.2f}M params), crop "
        f"{'x'.join(map(str, args.crop))}, {args.labeled}+{args.unlabeled} volumes, "
        f"losses {', '.join(config.losses)}, dtype {config.model.dtype}")
  gflops = '-' if flops is None else f'{flops / 1e9:.0f}'
  mib = lambda x: '-' if x is None else f'{x / MIB:.0f}'
  print(f"init {init_s:.1f} s, compile {compile_s:.1f} s, {gflops} GFLOPs/step, temp "
        f"{mib(memory['temp_size_in_bytes'])} MiB, args {mib(memory['argument_size_in_bytes'])} "
        f"MiB, out {mib(memory['output_size_in_bytes'])} MiB")
  if times:
    print(f"step: median {result['median_s']:.2f} s over {len(times)} (all: "
          f"{', '.join(f'{x:.2f}' for x in times)}), loss {loss:.4f}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2, default=list)
  return 0


if __name__ == '__main__':
  sys.exit(main())
