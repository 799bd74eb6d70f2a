"""3D V-Net of UA-MT / MCF (`networks/vnet.py`), returning logits and full-resolution features.

Layout follows the PyTorch original with `n_filters=16`, batch norm and `has_dropout=True`:
five stages of 1, 2, 3, 3, 3 conv3x3x3-BN-ReLU layers (channels 16-32-64-128-256), down by a
2x2x2 stride-2 convolution (+BN-ReLU) that doubles the channels, up by a 2x2x2 stride-2
transposed convolution (+BN-ReLU) that halves them and is *added* to the skip; decoder stages of
3, 3, 2, 1 layers; channel dropout (PyTorch's Dropout3d, p=0.5) on the bottleneck and on the last
decoder map; a 1x1x1 classifier. Arrays are NDHWC; every spatial side must be a multiple of 16.

The UA-MT and MCF V-Nets use plain conv stages (their `ResidualConvBlock` is defined but not
used); `residual=True` switches to V-Net's residual stages (x + convs(x), then ReLU).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jaxseg.models.layers import Conv, ConvTranspose

# Conv layers per encoder stage (the decoder mirrors stages 4..1: 3, 3, 2, 1).
VNET_STAGES = (1, 2, 3, 3, 3)
# MCF initializes every (transposed) convolution with kaiming_normal_: an untruncated normal,
# std sqrt(2 / fan_in) (flax's he_normal truncates, and compiles slower on a CPU).
KERNEL_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  # PyTorch BatchNorm3d defaults: momentum 0.1 (flax counts the kept fraction), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def channel_dropout(rate: float, train: bool) -> nn.Dropout:
  """PyTorch's Dropout3d: whole channels of each sample are dropped (mask shared over D, H, W)."""
  return nn.Dropout(rate, broadcast_dims=(1, 2, 3), deterministic=not train)


class ConvStage(nn.Module):
  """`layers` conv3x3x3-BN-ReLU layers; with `residual`, the input is added before the last ReLU."""

  features: int
  layers: int
  residual: bool = False
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    skip = x
    for i in range(self.layers):
      x = Conv(self.features, (3, 3, 3), padding=1, kernel_init=KERNEL_INIT,
                      impl=self.conv_impl, name=f'conv{i}')(x)
      x = batch_norm(train, f'bn{i}')(x)
      if not (self.residual and i == self.layers - 1):
        x = nn.relu(x)
    return nn.relu(x + skip) if self.residual else x


class Resample(nn.Module):
  """2x2x2 stride-2 convolution (down) or transposed convolution (up), then BN-ReLU."""

  features: int
  up: bool
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    layer = ConvTranspose if self.up else Conv
    x = layer(self.features, (2, 2, 2), strides=(2, 2, 2), padding='VALID',
              kernel_init=KERNEL_INIT, impl=self.conv_impl, name='conv')(x)
    return nn.relu(batch_norm(train, 'bn')(x))


class VNetDecoder(nn.Module):
  """The V-Net decoder over five skips (full resolution first); returns (logits, features).

  Shared with the ResNet-34 encoder-decoder (MCF's `Resnet34` reuses this decoder as is).
  """

  num_classes: int
  base_filters: int = 16
  dropout: float = 0.5
  residual: bool = False
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, skips: Sequence[jax.Array], train: bool) -> tuple[jax.Array, jax.Array]:
    f = self.base_filters
    x = skips[4]
    for level, num_layers in zip((3, 2, 1, 0), (3, 3, 2, 1)):
      x = Resample(f * 2 ** level, up=True, conv_impl=self.conv_impl, name=f'up{level}')(
          x, train) + skips[level]
      x = ConvStage(f * 2 ** level, num_layers, self.residual, self.conv_impl,
                    name=f'dec{level}')(x, train)
    features = channel_dropout(self.dropout, train)(x)
    logits = Conv(self.num_classes, (1, 1, 1), kernel_init=KERNEL_INIT,
                         impl=self.conv_impl, name='classifier')(features)
    return logits, features


class VNet(nn.Module):
  """UA-MT/MCF V-Net.

  Returns:
    logits: (B, D, H, W, num_classes).
    features: (B, D, H, W, base_filters) last decoder map (after dropout, as MCF returns it),
      the voxel embedding contrastive terms use.
  """

  num_classes: int
  base_filters: int = 16
  dropout: float = 0.5  # 0 turns dropout off (UA-MT's has_dropout=False)
  residual: bool = False
  conv_impl: str = 'auto'  # layers.CONV_IMPLS: 'auto' takes the fast path on CPU

  @nn.compact
  def __call__(self, x_BDHWC: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    f = self.base_filters
    x, skips = x_BDHWC, []
    for level, num_layers in enumerate(VNET_STAGES):
      if level > 0:
        x = Resample(f * 2 ** level, up=False, conv_impl=self.conv_impl, name=f'down{level}')(
            x, train)
      # The first stage has one conv from 1 input channel: no residual possible there.
      x = ConvStage(f * 2 ** level, num_layers, self.residual and level > 0, self.conv_impl,
                    name=f'enc{level}')(x, train)
      skips.append(x)
    skips[4] = channel_dropout(self.dropout, train)(skips[4])
    logits, features = VNetDecoder(self.num_classes, f, self.dropout, self.residual,
                                   self.conv_impl, name='decoder')(skips, train)
    return {'logits': logits, 'features': features}
