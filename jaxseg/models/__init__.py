"""Segmentation networks: Flax modules whose `apply` is a pure function of (variables, images)."""

from jaxseg.errors import ConfigError
from jaxseg.models.dualstream import DualStream
from jaxseg.models.layers import CONV_IMPLS
from jaxseg.models.resnet3d import ResNet3D
from jaxseg.models.unet import UNet
from jaxseg.models.vnet import VNet


def build_model(config):
  """The network named by `config.model` (a ConfigDict with `name` and its arguments)."""
  name = config.model.name
  if name == 'unet':
    return UNet(num_classes=config.num_classes, channels=tuple(config.model.channels),
                dropout=tuple(config.model.dropout), norm=config.model.norm,
                projection_dim=config.model.projection_dim,
                projection_hidden=config.model.projection_hidden,
                pixel_projection_dim=config.model.get('pixel_projection_dim', 0),
                pixel_projection_hidden=config.model.get('pixel_projection_hidden', 0),
                conv_impl=_conv_impl(config))
  if name in SUBNETS_3D:
    return _build_3d(name, config)
  if name == 'dualstream':
    subnets = tuple(config.model.subnets)
    unknown = [s for s in subnets if s not in SUBNETS_3D]
    if len(subnets) != 2 or unknown:
      raise ConfigError(f'model.subnets: expected two of {", ".join(SUBNETS_3D)}, got {subnets}')
    # The parameter tree reads params['subnet_a'] / ['subnet_b'] (the attribute names).
    return DualStream(_build_3d(subnets[0], config), _build_3d(subnets[1], config))
  raise ConfigError(f'model.name: unknown model {name!r}; known: unet, vnet, resnet3d, dualstream')


SUBNETS_3D = ('vnet', 'resnet3d')


def _conv_impl(config) -> str:
  impl = config.model.get('conv_impl', 'auto')
  if impl not in CONV_IMPLS:
    raise ConfigError(f'model.conv_impl: unknown {impl!r}; known: {", ".join(CONV_IMPLS)}')
  return impl


def _build_3d(name: str, config):
  m = config.model
  if name == 'vnet':
    return VNet(num_classes=config.num_classes, base_filters=m.base_filters,
                dropout=m.dropout_3d, residual=m.vnet_residual, conv_impl=_conv_impl(config))
  return ResNet3D(num_classes=config.num_classes, base_filters=m.base_filters,
                  blocks=tuple(m.resnet_blocks), dropout=m.dropout_3d,
                  conv_impl=_conv_impl(config))
