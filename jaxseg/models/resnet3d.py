"""3D ResNet-34 encoder + V-Net decoder: MCF's `Resnet34` (`networks/ResNet34.py`, `resnet.py`).

Encoder: a 7x7x7 stride-1 stem convolution (no bias) to `base_filters` channels + BN-ReLU at full
resolution (no max pooling: MCF comments it out), then four stages of basic blocks (3, 4, 6, 3
for ResNet-34) with 2, 4, 8, 16 x `base_filters` channels, each starting with a stride-2 block
whose shortcut is a 1x1x1 stride-2 convolution + BN. The five maps (stem, stage 1..4) feed the
V-Net decoder (vnet.VNetDecoder) exactly as the V-Net's five encoder stages do. Dropout is only
on the last decoder map (MCF's `Resnet34` has none on the bottleneck). Arrays are NDHWC; every
spatial side must be a multiple of 16.

MCF's ResNet zeroes the last BN scale of each block ("bag of tricks"), but `Resnet34` then resets
every BN scale to 1 in its own initializer, so the effective initialization, kept here, is
scale 1 everywhere.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jaxseg.models.layers import Conv
from jaxseg.models.vnet import KERNEL_INIT, VNetDecoder, batch_norm

RESNET34_BLOCKS = (3, 4, 6, 3)


class BasicBlock(nn.Module):
  """conv3-BN-ReLU-conv3-BN plus the (projected when the shape changes) input, then ReLU."""

  features: int
  stride: int = 1
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    s = (self.stride,) * 3
    # Explicit padding 1 as PyTorch's: flax's 'SAME' pads (0, 1) for a stride-2 conv on an even
    # side, which would shift every sampled window by one voxel.
    y = Conv(self.features, (3, 3, 3), strides=s, padding=1, use_bias=False,
                    kernel_init=KERNEL_INIT, impl=self.conv_impl, name='conv1')(x)
    y = nn.relu(batch_norm(train, 'bn1')(y))
    y = Conv(self.features, (3, 3, 3), padding=1, use_bias=False,
                    kernel_init=KERNEL_INIT, impl=self.conv_impl, name='conv2')(y)
    y = batch_norm(train, 'bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1, 1), strides=s, padding='VALID', use_bias=False,
                      kernel_init=KERNEL_INIT, impl=self.conv_impl, name='shortcut')(x)
      x = batch_norm(train, 'shortcut_bn')(x)
    return nn.relu(y + x)


class ResNet3DEncoder(nn.Module):
  """Returns the five maps the decoder needs: stem (full resolution) and stages 1..4."""

  base_filters: int = 16
  blocks: Sequence[int] = RESNET34_BLOCKS
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool) -> list[jax.Array]:
    x = Conv(self.base_filters, (7, 7, 7), padding=3, use_bias=False,
                    kernel_init=KERNEL_INIT, impl=self.conv_impl, name='stem')(x)
    x = nn.relu(batch_norm(train, 'stem_bn')(x))
    maps = [x]
    for stage, num_blocks in enumerate(self.blocks):
      features = self.base_filters * 2 ** (stage + 1)
      for b in range(num_blocks):
        x = BasicBlock(features, 2 if b == 0 else 1, self.conv_impl,
                       name=f'stage{stage + 1}_block{b}')(x, train)
      maps.append(x)
    return maps


class ResNet3D(nn.Module):
  """MCF's 3D ResNet-34 encoder-decoder.

  Returns:
    logits: (B, D, H, W, num_classes).
    features: (B, D, H, W, base_filters) last decoder map (after dropout, as MCF returns it).
  """

  num_classes: int
  base_filters: int = 16
  blocks: Sequence[int] = RESNET34_BLOCKS
  dropout: float = 0.5
  conv_impl: str = 'auto'  # layers.CONV_IMPLS: 'auto' takes the fast path on CPU

  @nn.compact
  def __call__(self, x_BDHWC: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    if len(self.blocks) != 4:
      raise ValueError(f'ResNet3D needs 4 stages of blocks (the decoder has 4 levels), '
                       f'got {self.blocks}')
    maps = ResNet3DEncoder(self.base_filters, tuple(self.blocks), self.conv_impl,
                           name='encoder')(x_BDHWC, train)
    logits, features = VNetDecoder(self.num_classes, self.base_filters, self.dropout,
                                   conv_impl=self.conv_impl, name='decoder')(maps, train)
    return {'logits': logits, 'features': features}
