"""2D U-Net of SSL4MIS (channels 16-32-64-128-256), returning logits and the features contrast needs.

Layout follows SSL4MIS `networks/unet.py`: each level is conv3x3-norm-LeakyReLU-dropout-conv3x3-
norm-LeakyReLU; down by 2x2 max pooling; up by a 1x1 convolution, bilinear upsampling and
concatenation with the skip; dropout per encoder level (0.05, 0.1, 0.2, 0.3, 0.5) and none in the
decoder. Arrays are NHWC.

With `projection_dim > 0` the model also has a shallow projection head (global average pool of the
bottleneck, Dense-ReLU-Dense, L2 normalization), used by patch-level contrast: `embed_patches`
runs the encoder and the head on a batch of patches, `project` the head on pooled features.
With `pixel_projection_dim > 0` a pixel head (two 1x1 convolutions on the full-resolution decoder
map, as Hu et al.'s h2 and Chaitanya et al.'s code) gives L2-normalized per-pixel embeddings for
local contrast.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.layers import Conv

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
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    x = Conv(self.features, (3, 3), impl=self.conv_impl, name='conv1')(x)
    x = nn.leaky_relu(_norm(self.norm, train, 'norm1', self.features)(x), negative_slope=0.01)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Conv(self.features, (3, 3), impl=self.conv_impl, name='conv2')(x)
    return nn.leaky_relu(_norm(self.norm, train, 'norm2', self.features)(x), negative_slope=0.01)


class Encoder(nn.Module):
  """Returns the skip features of every level; the last is the bottleneck."""

  channels: Sequence[int]
  dropout: Sequence[float]
  norm: str
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool) -> list[jax.Array]:
    skips = []
    for level, (features, rate) in enumerate(zip(self.channels, self.dropout)):
      if level > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = ConvBlock(features, rate, self.norm, self.conv_impl, name=f'down{level}')(x, train)
      skips.append(x)
    return skips


class Decoder(nn.Module):
  """Returns (logits, full-resolution features before the classifier)."""

  channels: Sequence[int]
  num_classes: int
  norm: str
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, skips: list[jax.Array], train: bool) -> tuple[jax.Array, jax.Array]:
    x = skips[-1]
    for level in reversed(range(len(self.channels) - 1)):
      x = Conv(self.channels[level], (1, 1), impl=self.conv_impl,
                      name=f'up{level}_reduce')(x)
      skip = skips[level]
      x = jax.image.resize(x, (x.shape[0], *skip.shape[1:3], x.shape[-1]), 'bilinear')
      x = jnp.concatenate([skip, x], axis=-1)
      x = ConvBlock(self.channels[level], 0.0, self.norm, self.conv_impl, name=f'up{level}')(
          x, train)
    return Conv(self.num_classes, (3, 3), impl=self.conv_impl, name='classifier')(x), x


class ProjectionHead(nn.Module):
  """Dense-ReLU-Dense on pooled features, L2-normalized (the contrastive embedding)."""

  hidden: int
  features: int

  @nn.compact
  def __call__(self, x_ND: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, name='dense1')(x_ND))
    x = nn.Dense(self.features, name='dense2')(x)
    # eps keeps the gradient finite for an all-zero feature vector.
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class PixelProjectionHead(nn.Module):
  """Conv1x1-ReLU-Conv1x1 on a feature map, L2-normalized per pixel."""

  hidden: int
  features: int
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = nn.relu(Conv(self.hidden, (1, 1), impl=self.conv_impl, name='conv1')(x_BHWC))
    x = Conv(self.features, (1, 1), impl=self.conv_impl, name='conv2')(x)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class UNet(nn.Module):
  """U-Net returning a dict of outputs.

  Returns:
    logits: (B, H, W, num_classes).
    decoder_features: (B, H, W, channels[0]) full-resolution decoder map before the classifier,
      where pixel-level contrastive heads attach.
    bottleneck: (B, H/16, W/16, channels[-1]) encoder output, where global/patch heads attach.
    embedding: (B, projection_dim) projection of the pooled bottleneck, when projection_dim > 0.
    pixel_embedding: (B, H, W, pixel_projection_dim) per-pixel projection of decoder_features,
      when pixel_projection_dim > 0.
  """

  num_classes: int
  channels: Sequence[int] = (16, 32, 64, 128, 256)
  dropout: Sequence[float] = SSL4MIS_DROPOUT
  norm: str = 'batch'
  projection_dim: int = 0
  projection_hidden: int = 256
  pixel_projection_dim: int = 0
  pixel_projection_hidden: int = 0  # 0: the decoder's width
  conv_impl: str = 'auto'  # layers.CONV_IMPLS: 'auto' takes the fast path on CPU

  def setup(self):
    if len(self.dropout) != len(self.channels):
      raise ValueError(f'dropout {self.dropout} needs one rate per level {self.channels}')
    self.encoder = Encoder(self.channels, self.dropout, self.norm, self.conv_impl)
    self.decoder = Decoder(self.channels, self.num_classes, self.norm, self.conv_impl)
    if self.projection_dim:
      self.head = ProjectionHead(self.projection_hidden, self.projection_dim)
    if self.pixel_projection_dim:
      self.pixel_head = PixelProjectionHead(self.pixel_projection_hidden or self.channels[0],
                                            self.pixel_projection_dim, self.conv_impl)

  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    skips = self.encoder(x_BHWC, train)
    logits, features = self.decoder(skips, train)
    out = {'logits': logits, 'decoder_features': features, 'bottleneck': skips[-1]}
    if self.projection_dim:
      out['embedding'] = self.head(skips[-1].mean(axis=(1, 2)))
    if self.pixel_projection_dim:
      out['pixel_embedding'] = self.pixel_head(features)
    return out

  def embed_patches(self, patches_NHWC: jax.Array, train: bool = False) -> jax.Array:
    """Encoder, global average pool and projection head on image patches: (N, projection_dim)."""
    return self.head(self.encoder(patches_NHWC, train)[-1].mean(axis=(1, 2)))

  def project(self, x_ND: jax.Array, train: bool = False) -> jax.Array:
    """The projection head alone, on already pooled features (N, channels[-1])."""
    del train  # the head has no dropout or normalization statistics
    return self.head(x_ND)
