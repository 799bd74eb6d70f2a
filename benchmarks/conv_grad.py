"""Convolution time per layer and whole train steps, `model.conv_impl` 'xla' beside 'fast'.

  python benchmarks/conv_grad.py                     # both tables at the issue-11 shapes
  python benchmarks/conv_grad.py --tables steps      # whole steps only
  python benchmarks/conv_grad.py --paper             # U-Net at 256x256, V-Net at 112x112x80

Layers: every distinct convolution of the U-Net (24 images at 128x128) and the V-Net (batch 2 at
48x48x32) and ResNet3D's stem and strided ones, each timed as forward, input gradient and weight
gradient (each its own jitted function) with jaxseg.models.layers.conv / conv_transpose under
both implementations. Steps: the 2D mean-teacher step (12 labeled + 12 unlabeled at 128x128,
acdc_meanteacher) and the V-Net supervised step (2 volumes at 48x48x32), built from the
project's own train step; the implementations' compiled steps are called alternately, so a load
on a shared machine falls on both. Reports medians and the xla / fast ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import machine_info, time_compiled  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg.models import build_model, layers  # noqa: E402
from jaxseg.training import schedules  # noqa: E402
from jaxseg.training import step as step_lib  # noqa: E402

IMPLS = ('xla', 'fast')


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tables', default='layers,steps', help='comma-separated: layers, steps')
  p.add_argument('--paper', action='store_true',
                 help='U-Net 12+12 at 256x256 and V-Net 2 at 112x112x80 instead')
  p.add_argument('--repeats', type=int, default=5, help='timed calls per variant')
  args = p.parse_args(argv)
  args.tables = [t for t in args.tables.split(',') if t]
  args.size = 256 if args.paper else 128
  args.crop = (112, 112, 80) if args.paper else (48, 48, 32)
  return args


# ---------------------------------------------------------------------------------------------
# Per-layer table.


def unet_convs(size: int, batch: int, channels=(16, 32, 64, 128, 256), num_classes=4):
  """(name, input shape, kernel, strides, padding, out channels, transposed) of the U-Net."""
  convs, cin = [], 1
  for level, c in enumerate(channels):
    s = size // 2 ** level
    convs += [(f'down{level}.conv1', (batch, s, s, cin), (3, 3), (1, 1), 'SAME', c, False),
              (f'down{level}.conv2', (batch, s, s, c), (3, 3), (1, 1), 'SAME', c, False)]
    cin = c
  for level in reversed(range(len(channels) - 1)):
    s, c = size // 2 ** level, channels[level]
    convs += [(f'up{level}_reduce', (batch, s // 2, s // 2, channels[level + 1]), (1, 1), (1, 1),
               'SAME', c, False),
              (f'up{level}.conv1', (batch, s, s, 2 * c), (3, 3), (1, 1), 'SAME', c, False)]
  convs.append(('classifier', (batch, size, size, channels[0]), (3, 3), (1, 1), 'SAME',
                num_classes, False))
  return convs


def vnet_convs(crop, batch: int, f: int = 16):
  """The distinct convolutions of the V-Net, plus ResNet3D's stem, stride-2 conv and shortcut."""
  convs, cin = [], 1
  for level in range(5):
    shape = tuple(n // 2 ** level for n in crop)
    c = f * 2 ** level
    if level > 0:
      convs.append((f'down{level}', (batch, *(2 * n for n in shape), c // 2), (2, 2, 2),
                    (2, 2, 2), 'VALID', c, False))
      cin = c
    convs.append((f'enc{level}.conv', (batch, *shape, cin), (3, 3, 3), (1, 1, 1), 1, c, False))
    cin = c
    if level < 4:
      convs.append((f'up{level}', (batch, *(n // 2 for n in shape), 2 * c), (2, 2, 2),
                    (2, 2, 2), 'VALID', c, True))
  # The first stage has only the 1 -> f convolution; the last decoder stage's f -> f one is the
  # widest map of the network.
  convs += [('dec0.conv', (batch, *crop, f), (3, 3, 3), (1, 1, 1), 1, f, False),
            ('classifier', (batch, *crop, f), (1, 1, 1), (1, 1, 1), 'SAME', 2, False),
            ('resnet.stem', (batch, *crop, 1), (7, 7, 7), (1, 1, 1), 3, f, False),
            ('resnet.stride2', (batch, *crop, f), (3, 3, 3), (2, 2, 2), 1, 2 * f, False),
            ('resnet.shortcut', (batch, *crop, f), (1, 1, 1), (2, 2, 2), 'VALID', 2 * f, False)]
  return convs


def _median_ms(fn, args, repeats):
  return 1e3 * float(np.median(time_compiled(fn, args, repeats)))


def layer_times(conv, impl: str, repeats: int) -> dict:
  name, shape, kernel, strides, padding, out_c, transposed = conv
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (*kernel, shape[-1], out_c)) * 0.1
  op = layers.conv_transpose if transposed else layers.conv
  f = lambda x, w: op(x, w, strides, padding, impl)
  g = jax.random.normal(kg, jax.eval_shape(f, x, w).shape)
  fwd = jax.jit(f)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
  return {'fwd': _median_ms(fwd, (x, w), repeats), 'dx': _median_ms(dx, (x, w, g), repeats),
          'dw': _median_ms(dw, (x, w, g), repeats)}


def layer_table(title: str, convs, repeats: int) -> list[str]:
  lines = [f'{title}', '',
           '| layer | input | kernel/stride | xla fwd / dx / dw ms | fast fwd / dx / dw ms '
           '| xla / fast (all three) |', '|---|---|---|---|---|---:|']
  totals = {impl: 0.0 for impl in IMPLS}
  for conv in convs:
    name, shape, kernel, strides = conv[:4]
    t = {impl: layer_times(conv, impl, repeats) for impl in IMPLS}
    cells = []
    for impl in IMPLS:
      totals[impl] += sum(t[impl].values())
      cells.append(' / '.join(f'{t[impl][k]:.1f}' for k in ('fwd', 'dx', 'dw')))
    ratio = sum(t['xla'].values()) / sum(t['fast'].values())
    kind = 'T' if conv[6] else ''
    lines.append(f"| {name} | {'x'.join(map(str, shape))} | "
                 f"{'x'.join(map(str, kernel))}/{strides[0]}{kind} | {cells[0]} | {cells[1]} | "
                 f"{ratio:.2f} |")
    print(lines[-1], file=sys.stderr, flush=True)
  lines.append(f"| total (each layer once) | | | {totals['xla']:.0f} | {totals['fast']:.0f} | "
               f"{totals['xla'] / totals['fast']:.2f} |")
  return lines


# ---------------------------------------------------------------------------------------------
# Whole steps.


def mean_teacher_config(size: int, impl: str):
  config = config_lib.load_experiment('acdc_meanteacher', 'paper')
  with config.unlocked():
    config.data.image_size = size
    config.data.labeled_batch = config.data.unlabeled_batch = 12
    config.mesh.num_devices = 1
    config.model.conv_impl = impl
  return config


def vnet_config(crop, impl: str):
  config = config_lib.base_config()
  with config.unlocked():
    config.num_classes = 2
    config.class_names = ('foreground',)
    config.data.crop_shape = tuple(crop)
    config.data.labeled_batch = 2
    config.model.name = 'vnet'
    config.model.conv_impl = impl
    config.losses = ('supervised',)
    config.mesh.num_devices = 1
  return config


def compiled_step(config, mesh, image_shape):
  """(compiled step, state, labeled, unlabeled) on random batches of the config's sizes."""
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  jitted = step_lib.jit_train_step(train_step, mesh)
  state = step_lib.replicate(step_lib.init_state(model, tx, config), mesh)
  rng = np.random.default_rng(0)
  b = config.data.labeled_batch
  labeled = {'image': rng.random((b, *image_shape), dtype=np.float32),
             'label': rng.integers(0, config.num_classes, (b, *image_shape), dtype=np.int32)}
  unlabeled = None
  if step_lib.streams(config).unlabeled:
    u = rng.random((config.data.unlabeled_batch, *image_shape), dtype=np.float32)
    unlabeled = {'image_weak': u, 'image_strong': u}
  labeled, unlabeled = step_lib.shard_batch(labeled, mesh), step_lib.shard_batch(unlabeled, mesh)
  t = time.perf_counter()
  compiled = jitted.lower(state, labeled, unlabeled).compile()
  return compiled, state, labeled, unlabeled, time.perf_counter() - t


def step_table(args) -> list[str]:
  mesh = step_lib.make_mesh(1)
  steps = {
      f'mean teacher {args.size}x{args.size}, 12+12': (
          lambda impl: mean_teacher_config(args.size, impl), (args.size, args.size)),
      f"V-Net supervised {'x'.join(map(str, args.crop))}, batch 2": (
          lambda impl: vnet_config(args.crop, impl), args.crop),
  }
  lines = ['| step | xla s | fast s | xla / fast | compile xla / fast s | loss after the timed '
           'steps xla / fast |', '|---|---:|---:|---:|---|---|']
  for title, (make_config, shape) in steps.items():
    print(f'{title}: compiling...', file=sys.stderr, flush=True)
    runs = {impl: list(compiled_step(make_config(impl), mesh, shape)) for impl in IMPLS}
    times = {impl: [] for impl in IMPLS}
    losses = {}
    for i in range(args.repeats + 1):  # the first call of each is a warm-up
      for impl in IMPLS:
        compiled, state, labeled, unlabeled, _ = runs[impl]
        t = time.perf_counter()
        state, metrics = compiled(state, labeled, unlabeled)
        jax.block_until_ready((state, metrics))
        runs[impl][1] = state
        if i:
          times[impl].append(time.perf_counter() - t)
        losses[impl] = float(metrics['loss'])
    med = {impl: float(np.median(times[impl])) for impl in IMPLS}
    lines.append(f"| {title} | {med['xla']:.2f} | {med['fast']:.2f} | "
                 f"{med['xla'] / med['fast']:.2f} | {runs['xla'][4]:.0f} / {runs['fast'][4]:.0f} | "
                 f"{losses['xla']:.5f} / {losses['fast']:.5f} |")
    print(lines[-1], file=sys.stderr, flush=True)
  return lines


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  m = machine_info(1)
  out = [f"machine: {m['device_kind']} ({m['platform']}); CPU {m['cpu']}, {m['cpu_count']} cores; "
         f"jax {m['jax']}; median of {args.repeats}", '']
  if 'layers' in args.tables:
    out += layer_table(f'U-Net, 24 images at {args.size}x{args.size}',
                       unet_convs(args.size, 24), args.repeats) + ['']
    out += layer_table(f"V-Net / ResNet3D, batch 2 at {'x'.join(map(str, args.crop))}",
                       vnet_convs(args.crop, 2), args.repeats) + ['']
  if 'steps' in args.tables:
    out += step_table(args)
  print('\n'.join(out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
