"""Two subnetworks on the same input (Karimijafarbigloo et al. 2024; MCF's V-Net + ResNet-34).

Both subnets see the same batch and keep their own parameters (`params['subnet_a']`,
`params['subnet_b']`) and batch statistics. The combined `logits` are the log of the mean of the
two softmax maps, so `softmax(logits)` is the averaged prediction the authors' test code uses
(`(softmax(vnet) + softmax(resnet)) / 2`) and `argmax(logits)` its label map: evaluation and the
sliding window need nothing dual-specific.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def mean_softmax_logits(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
  """log((softmax(a) + softmax(b)) / 2), computed in log space so it never takes log(0)."""
  both = jnp.stack([jax.nn.log_softmax(logits_a, -1), jax.nn.log_softmax(logits_b, -1)])
  return jax.nn.logsumexp(both, axis=0) - jnp.log(2.0).astype(both.dtype)


class DualStream(nn.Module):
  """Runs `subnet_a` and `subnet_b` (modules returning {'logits', 'features'}) on one input.

  Returns:
    logits: (B, D, H, W, K) log of the mean of the two softmaxes.
    logits_a, logits_b: (B, D, H, W, K) each subnet's own logits.
    features_a, features_b: (B, D, H, W, C) each subnet's full-resolution voxel features.
  """

  subnet_a: nn.Module
  subnet_b: nn.Module

  def __call__(self, x_BDHWC: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    a = self.subnet_a(x_BDHWC, train)
    b = self.subnet_b(x_BDHWC, train)
    return {'logits': mean_softmax_logits(a['logits'], b['logits']),
            'logits_a': a['logits'], 'logits_b': b['logits'],
            'features_a': a['features'], 'features_b': b['features']}
