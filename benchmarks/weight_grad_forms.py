"""The weight gradient of a 3x3 convolution written five ways, timed side by side on this backend.

  python benchmarks/weight_grad_forms.py
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution \
      python benchmarks/weight_grad_forms.py

The one op that keeps the CPU train steps behind PyTorch's (BUILD_NOTES.md, issue 11) is the
weight gradient dW[i, j, c, o] = sum_{b, h, w} x_pad[b, h + i, w + j, c] dy[b, h, w, o]. Forms:
  xla          XLA's own (the VJP of lax.conv_general_dilated)
  tap          one (C, N) @ (N, O) matrix product per tap on the shifted input
  tap_chunks   the same with N split into 8 batched chunks (so a 2-core matmul has work to split)
  im2col       the 9 shifted inputs side by side, one (9C, N) @ (N, O) product
  im2col_chunks  the same, 8 batched chunks summed
Shapes: the U-Net's 3x3 convolutions at 24 images of 128x128, and the V-Net's depth-folded ones
(jaxseg.models.layers folds a 3x3x3 convolution to a 2D one over 3 x C channels) at batch 2 of
48x48x32. Every form is checked against XLA's to 1e-4 relative, then the forms are called in
turn, so a load on a shared machine falls on all of them; medians in ms.
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
from jax import lax  # noqa: E402

from common import alternate, machine_info  # noqa: E402

KERNEL = 3
CHUNKS = 8
# (batch, height, width, in channels, out channels)
SHAPES = (
    (24, 128, 128, 16, 16), (24, 64, 64, 32, 32), (24, 32, 32, 64, 64), (24, 16, 16, 128, 128),
    (24, 128, 128, 32, 16),  # the decoder's first block after the skip concatenation
    (64, 48, 48, 48, 16), (32, 24, 24, 96, 32), (16, 12, 12, 192, 64),  # V-Net, depth-folded
)


def xla(x, dy):
  def forward(w):
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  _, vjp = jax.vjp(forward, jnp.zeros((KERNEL, KERNEL, x.shape[-1], dy.shape[-1]), x.dtype))
  return vjp(dy)[0]


def shifted(x):
  """The KERNEL^2 shifted views of the SAME-padded input, each (B, H, W, C), in tap order."""
  pad = KERNEL // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  _, h, w, _ = x.shape
  return [xp[:, i:i + h, j:j + w, :] for i in range(KERNEL) for j in range(KERNEL)]


def tap(x, dy):
  d = dy.reshape(-1, dy.shape[-1])
  taps = [view.reshape(-1, x.shape[-1]).T @ d for view in shifted(x)]
  return jnp.stack(taps).reshape(KERNEL, KERNEL, x.shape[-1], -1)


def tap_chunks(x, dy):
  d = dy.reshape(CHUNKS, -1, dy.shape[-1])
  taps = [jnp.einsum('nkc,nko->co', view.reshape(CHUNKS, -1, x.shape[-1]), d)
          for view in shifted(x)]
  return jnp.stack(taps).reshape(KERNEL, KERNEL, x.shape[-1], -1)


def im2col(x, dy):
  cols = jnp.concatenate(shifted(x), axis=-1).reshape(-1, KERNEL * KERNEL * x.shape[-1])
  return (cols.T @ dy.reshape(-1, dy.shape[-1])).reshape(KERNEL, KERNEL, x.shape[-1], -1)


def im2col_chunks(x, dy):
  cols = jnp.concatenate(shifted(x), axis=-1).reshape(CHUNKS, -1, KERNEL * KERNEL * x.shape[-1])
  dw = jnp.einsum('nkc,nko->co', cols, dy.reshape(CHUNKS, -1, dy.shape[-1]))
  return dw.reshape(KERNEL, KERNEL, x.shape[-1], -1)


FORMS = {'xla': xla, 'tap': tap, 'tap_chunks': tap_chunks, 'im2col': im2col,
         'im2col_chunks': im2col_chunks}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--forms', default=','.join(FORMS), help=f'comma-separated of {", ".join(FORMS)}')
  args = p.parse_args(argv)
  forms = {name: jax.jit(FORMS[name]) for name in args.forms.split(',')}
  print(machine_info(1))
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; median of {args.repeats} calls, ms\n')
  print('| shape (B, H, W, C -> O) | ' + ' | '.join(forms) + ' |')
  print('|---|' + '---:|' * len(forms))
  rng = np.random.default_rng(0)
  for b, h, w, c, o in SHAPES:
    x = jnp.asarray(rng.standard_normal((b, h, w, c)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((b, h, w, o)), jnp.float32)
    reference = xla(x, dy)
    scale = float(jnp.max(jnp.abs(reference)))
    for name, fn in forms.items():  # also the warm-up (compilation)
      error = float(jnp.max(jnp.abs(fn(x, dy) - reference))) / scale
      if error > 1e-4:
        raise AssertionError(f'{name} differs from XLA by {error:.2e} at {(b, h, w, c, o)}')
    calls = {name: lambda fn=fn: jax.block_until_ready(fn(x, dy)) for name, fn in forms.items()}
    cells = ' | '.join(f'{ms:.0f}' for ms in alternate(calls, 0, args.repeats).values())
    print(f'| {b}x{h}x{w}x{c} -> {o} | {cells} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
