"""2D U-Net of SSL4MIS (channels 16-32-64-128-256), returning logits and the features contrast needs.

Layout follows SSL4MIS `networks/unet.py`: each level is conv3x3-norm-LeakyReLU-dropout-conv3x3-
norm-LeakyReLU; down by 2x2 max pooling; up by a 1x1 convolution, bilinear upsampling and
concatenation with the skip; dropout per encoder level (0.05, 0.1, 0.2, 0.3, 0.5) and none in the
decoder. Arrays are NHWC.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

SSL4MIS_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


def _norm(kind: str, train: bool, name: str, features: int) -> nn.Module:
  if kind == 'batch':
    # PyTorch BatchNorm2d defaults: momentum 0.1 (flax counts the kept fraction), eps 1e-5.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  if kind == 'group':
    # 8 groups (Wu & He's small-batch setting), fewer when 8 does not divide the channels.
    return nn.GroupNorm(num_groups=math.gcd(features, 8), name=name)
  raise ValueError(f'unknown norm {kind!r}; expected "batch" or "group"')


class ConvBlock(nn.Module):
  """Two conv3x3-norm-LeakyReLU layers with dropout between them."""

  features: int
  dropout: float
  norm: str

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (3, 3), name='conv1')(x)
    x = nn.leaky_relu(_norm(self.norm, train, 'norm1', self.features)(x), negative_slope=0.01)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Conv(self.features, (3, 3), name='conv2')(x)
    return nn.leaky_relu(_norm(self.norm, train, 'norm2', self.features)(x), negative_slope=0.01)


class UNet(nn.Module):
  """U-Net returning a dict of outputs.

  Returns:
    logits: (B, H, W, num_classes).
    decoder_features: (B, H, W, channels[0]) full-resolution decoder map before the classifier,
      where pixel-level contrastive heads attach.
    bottleneck: (B, H/16, W/16, channels[-1]) encoder output, where global/patch heads attach.
  """

  num_classes: int
  channels: Sequence[int] = (16, 32, 64, 128, 256)
  dropout: Sequence[float] = SSL4MIS_DROPOUT
  norm: str = 'batch'

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    if len(self.dropout) != len(self.channels):
      raise ValueError(f'dropout {self.dropout} needs one rate per level {self.channels}')
    skips = []
    x = x_BHWC
    for level, (features, rate) in enumerate(zip(self.channels, self.dropout)):
      if level > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = ConvBlock(features, rate, self.norm, name=f'down{level}')(x, train)
      skips.append(x)
    bottleneck = x
    for level in reversed(range(len(self.channels) - 1)):
      x = nn.Conv(self.channels[level], (1, 1), name=f'up{level}_reduce')(x)
      skip = skips[level]
      x = jax.image.resize(x, (x.shape[0], *skip.shape[1:3], x.shape[-1]), 'bilinear')
      x = jnp.concatenate([skip, x], axis=-1)
      x = ConvBlock(self.channels[level], 0.0, self.norm, name=f'up{level}')(x, train)
    logits = nn.Conv(self.num_classes, (3, 3), name='classifier')(x)
    return {'logits': logits, 'decoder_features': x, 'bottleneck': bottleneck}
