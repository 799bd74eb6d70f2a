"""Convolution layers with a path XLA:CPU runs fast, exact rewrites of XLA's own.

On the CPU backend (jax 0.10), XLA hands 2D convolutions to a fast library (YNNPACK/XNNPACK
fusions, gradients included) but runs 3D, strided and transposed ones and their gradients
through generic loops that reach 1-10 GFLOP/s. `conv_impl='fast'` rewrites each such convolution
into operations XLA:CPU runs fast, computing the same function (equal to float rounding,
gradients included: tests/test_conv.py):

* 1x1 (any rank, any stride): a strided slice and one matrix product over the channels.
* kernel == stride, no padding (V-Net's 2x2x2 stride-2 down-convolutions): space-to-depth and
  one matrix product.
* transposed, kernel == stride (V-Net's 2x2x2 stride-2 up-convolutions): one matrix product to
  prod(kernel) x C channels, then depth-to-space.
* 3D, any other kernel and stride (3x3x3, ResNet3D's 7x7x7 stem and stride-2 convs): the depth
  taps are stacked on the channels and the rest is one 2D convolution over (batch x depth), which
  XLA:CPU runs (and differentiates) through its fast 2D path.
* at most SMALL_MAP output positions per image (the V-Net bottleneck): im2col and one matmul.

2D convolutions with larger maps stay XLA's own: no formulation measured beat its weight gradient.

Everything else, and every op on other backends with `conv_impl='auto'`, is XLA's own: GPUs keep
cuDNN. The layers are drop-ins for `nn.Conv` / `nn.ConvTranspose` as the models use them: same
parameter names, shapes and initializers, so checkpoints are shared between the implementations.
Measurements: BUILD_NOTES.md, "Fast convolutions on CPU"; `benchmarks/conv_grad.py`.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import canonicalize_padding
from jax import lax

CONV_IMPLS = ('auto', 'xla', 'fast')


def resolve_impl(impl: str) -> str:
  """'auto' -> 'fast' on the CPU backend (where it was measured faster), else 'xla'."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'model.conv_impl: unknown {impl!r}; expected one of {", ".join(CONV_IMPLS)}')
  if impl == 'auto':
    return 'fast' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def _explicit_padding(padding, kernel: Sequence[int], strides: Sequence[int],
                      spatial: Sequence[int]) -> list[tuple[int, int]]:
  padding = canonicalize_padding(padding, len(kernel))
  if isinstance(padding, str):
    if padding not in ('SAME', 'VALID'):
      raise ValueError(f'conv padding {padding!r}: the fast path knows SAME, VALID or pairs')
    return lax.padtype_to_pads(spatial, kernel, strides, padding)
  return [tuple(p) for p in padding]


def _xla_conv(x, w, strides, pads):
  spec = 'N' + 'DHW'[3 - (x.ndim - 2):] + 'C'
  return lax.conv_general_dilated(x, w, strides, pads,
                                  dimension_numbers=(spec, spec[1:-1] + 'IO', spec))


def _channel_matmul(x, w_io):
  """x (..., I) @ w (I, O) over the last axis."""
  return lax.dot_general(x, w_io, (((x.ndim - 1,), (0,)), ((), ())))


def conv(x: jax.Array, w: jax.Array, strides: Sequence[int], padding, impl: str = 'fast'):
  """Channels-last N-D convolution, `lax.conv_general_dilated` with (N...C, ...IO, N...C).

  `padding` is 'SAME', 'VALID', an int or per-axis pairs (as `nn.Conv`'s). With impl 'fast' the
  shapes listed in the module docstring are rewritten; the result is the same function.
  """
  kernel, strides = tuple(w.shape[:-2]), tuple(strides)
  pads = _explicit_padding(padding, kernel, strides, x.shape[1:-1])
  if resolve_impl(impl) == 'xla':
    return _xla_conv(x, w, strides, pads)
  if all(p == (0, 0) for p in pads) and all(k == s for k, s in zip(kernel, strides)):
    return _patch_conv(x, w)
  if len(kernel) == 3:
    return _conv3d_as_2d(x, w, strides, pads)
  out = [(n + lo + hi - k) // s + 1
         for n, k, s, (lo, hi) in zip(x.shape[1:-1], kernel, strides, pads)]
  if math.prod(out) <= SMALL_MAP:
    return _im2col_conv(x, w, strides, pads, out)
  return _xla_conv(x, w, strides, pads)


# Output maps of at most this many positions per image (the V-Net bottleneck: 3x3 per depth
# slice at 48x48x32) are computed by im2col and one matmul: XLA:CPU's convolution runs such
# small, wide maps at about 1 GFLOP/s.
SMALL_MAP = 16


def _im2col_conv(x, w, strides, pads, out):
  """Every kernel tap as a strided slice of the padded input, stacked on channels, one matmul."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  taps = []
  for offset in itertools.product(*(range(k) for k in w.shape[:-2])):
    start = (0, *offset, 0)
    limit = (x.shape[0], *(o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out)),
             x.shape[-1])
    taps.append(lax.slice(x, start, limit, (1, *strides, 1)))
  return _channel_matmul(jnp.concatenate(taps, axis=-1), w.reshape(-1, w.shape[-1]))


def _patch_conv(x, w):
  """Kernel == stride, no padding: non-overlapping patches, space-to-depth and one matmul."""
  kernel = w.shape[:-2]
  d = len(kernel)
  # VALID drops the trailing remainder of a side the stride does not divide.
  out = [n // k for n, k in zip(x.shape[1:-1], kernel)]
  x = x[(slice(None), *(slice(0, o * k) for o, k in zip(out, kernel)))]
  if all(k == 1 for k in kernel):
    return _channel_matmul(x, w.reshape(w.shape[-2:]))
  split = [x.shape[0]]
  for o, k in zip(out, kernel):
    split += [o, k]
  x = x.reshape(*split, x.shape[-1])
  # (B, o1, k1, o2, k2, ..., C) -> (B, o1, o2, ..., k1, k2, ..., C): the kernel's own order.
  perm = (0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
  x = x.transpose(perm).reshape(x.shape[0], *out, -1)
  return _channel_matmul(x, w.reshape(-1, w.shape[-1]))


def _conv3d_as_2d(x, w, strides, pads):
  """3D conv as one 2D conv: the kD depth taps become kD x C input channels."""
  b, depth, _, _, c = x.shape
  kd = w.shape[0]
  sd, (lo, hi) = strides[0], pads[0]
  out_d = (depth + lo + hi - kd) // sd + 1
  x = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
  taps = [lax.slice_in_dim(x, i, i + sd * (out_d - 1) + 1, sd, axis=1) for i in range(kd)]
  x = jnp.concatenate(taps, axis=-1)  # (B, Do, H, W, kD*C), tap-major channels
  x = x.reshape(b * out_d, *x.shape[2:])
  w2 = jnp.moveaxis(w, 0, 2).reshape(*w.shape[1:3], kd * c, w.shape[-1])
  y = conv(x, w2, strides[1:], pads[1:], 'fast')
  return y.reshape(b, out_d, *y.shape[1:])


def conv_transpose(x: jax.Array, w: jax.Array, strides: Sequence[int], padding,
                   impl: str = 'fast'):
  """`lax.conv_transpose(x, w, strides, padding)` (channels-last, kernel (...IO), not flipped).

  With impl 'fast', kernel == stride and padding 'VALID' is one matmul and a depth-to-space.
  """
  kernel, strides = tuple(w.shape[:-2]), tuple(strides)
  padding = canonicalize_padding(padding, len(kernel))
  if resolve_impl(impl) == 'xla' or padding != 'VALID' or kernel != strides:
    spec = 'N' + 'DHW'[3 - len(kernel):] + 'C'
    return lax.conv_transpose(x, w, strides, padding,
                              dimension_numbers=(spec, spec[1:-1] + 'IO', spec))
  d, (b, *spatial, _), out_c = len(kernel), x.shape, w.shape[-1]
  # Every input voxel writes its own k1 x k2 x ... output patch, y[i*k + a] = x[i] @ w[k-1-a]:
  # lax.conv_transpose (transpose_kernel=False) is a convolution of the dilated input with w,
  # which reverses the taps relative to the output offsets.
  w_flipped = w[(slice(None, None, -1),) * d]
  y = _channel_matmul(x, jnp.moveaxis(w_flipped, -2, 0).reshape(w.shape[-2], -1))
  y = y.reshape(b, *spatial, *kernel, out_c)
  # (B, o1, o2, ..., k1, k2, ..., C) -> (B, o1, k1, o2, k2, ..., C) -> (B, o1*k1, ..., C).
  perm = [0]
  for i in range(d):
    perm += [1 + i, 1 + d + i]
  return y.transpose(*perm, 2 * d + 1).reshape(b, *(n * k for n, k in zip(spatial, kernel)), out_c)


def _tuple(v, rank: int) -> tuple[int, ...]:
  return (v,) * rank if isinstance(v, int) else tuple(v)


class Conv(nn.Module):
  """`nn.Conv` (channels-last, no dilation or groups) computed by `conv` with `impl`."""

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence = 'SAME'
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  impl: str = 'auto'

  def apply_kernel(self, x, kernel, strides):
    return conv(x, kernel, strides, self.padding, self.impl)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Parameters named, shaped and initialized as flax's: checkpoints work with either module.
    kernel_size = tuple(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init, (*kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = self.apply_kernel(x, kernel, _tuple(self.strides, len(kernel_size)))
    return y if bias is None else y + bias


class ConvTranspose(Conv):
  """`nn.ConvTranspose` (channels-last, kernel not transposed) computed by `conv_transpose`."""

  def apply_kernel(self, x, kernel, strides):
    return conv_transpose(x, kernel, strides, self.padding, self.impl)
