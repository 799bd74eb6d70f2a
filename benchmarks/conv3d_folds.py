"""A 3x3x3 convolution folded to 2D two ways: depth taps on the input or on the output channels.

  python benchmarks/conv3d_folds.py [--repeats 5]

jaxseg.models.layers runs a 3D convolution on CPU as one 2D convolution over (batch x depth)
with the kD depth taps stacked on the *input* channels (`input`: the input is copied kD times,
the weight gradient is a 2D one over kD x C channels). The alternative stacks them on the
*output* channels (`output`: one 2D convolution C -> kD x O over the unpadded slices, then the kD
shifted output slices summed), which copies nothing on the input side and gives the weight
gradient kD x O outputs. Both are timed (value and both gradients of sum(y^2), jitted) on the
V-Net's 3x3x3 layers at batch 2 of 48x48x32, alternating, after checking they agree; medians in ms.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import alternate, machine_info  # noqa: E402
from jaxseg.models import layers  # noqa: E402

PADS = ((1, 1),) * 3
# (batch, depth, height, width, in channels, out channels): the V-Net's 3x3x3 layers.
SHAPES = ((2, 32, 48, 48, 1, 16), (2, 32, 48, 48, 16, 16), (2, 16, 24, 24, 32, 32),
          (2, 8, 12, 12, 64, 64), (2, 4, 6, 6, 128, 128))


def input_fold(x, w):
  return layers.conv(x, w, (1, 1, 1), PADS, 'fast')


def output_fold(x, w):
  b, depth, h, wd, c = x.shape
  kd, kh, kw, _, o = w.shape
  lo, hi = PADS[0]
  w2 = jnp.moveaxis(w, 0, 3).reshape(kh, kw, c, kd * o)  # depth taps tap-major on the outputs
  z = layers.conv(x.reshape(b * depth, h, wd, c), w2, (1, 1), PADS[1:], 'fast')
  z = jnp.pad(z.reshape(b, depth, h, wd, kd, o), ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0), (0, 0)))
  out_d = depth + lo + hi - kd + 1
  return sum(z[:, i:i + out_d, :, :, i, :] for i in range(kd))


FOLDS = {'input': input_fold, 'output': output_fold}


def value_and_grads(fold):
  return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(fold(x, w) ** 2), argnums=(0, 1)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args(argv)
  print(machine_info(1))
  print(f'forward + both gradients, median of {args.repeats} calls, ms\n')
  print('| layer (B, D, H, W, C -> O) | ' + ' | '.join(FOLDS) + ' |')
  print('|---|' + '---:|' * len(FOLDS))
  rng = np.random.default_rng(0)
  for b, d, h, wd, c, o in SHAPES:
    x = jnp.asarray(rng.standard_normal((b, d, h, wd, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, c, o)) * 0.1, jnp.float32)
    fns = {name: value_and_grads(fold) for name, fold in FOLDS.items()}
    reference = jax.tree.leaves(fns['input'](x, w))
    for name, fn in fns.items():  # also the warm-up (compilation)
      for got, want in zip(jax.tree.leaves(fn(x, w)), reference):
        error = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
        if error > 1e-4:
          raise AssertionError(f'{name} differs from the input fold by {error:.2e}')
    calls = {name: lambda fn=fn: jax.block_until_ready(fn(x, w)) for name, fn in fns.items()}
    cells = ' | '.join(f'{ms:.0f}' for ms in alternate(calls, 0, args.repeats).values())
    print(f'| {b}x{d}x{h}x{wd}, {c} -> {o} | {cells} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
