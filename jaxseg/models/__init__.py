"""Segmentation networks: Flax modules whose `apply` is a pure function of (variables, images)."""

from jaxseg.errors import ConfigError
from jaxseg.models.unet import UNet


def build_model(config) -> UNet:
  """The network named by `config.model` (a ConfigDict with `name` and its arguments)."""
  name = config.model.name
  if name == 'unet':
    return UNet(num_classes=config.num_classes, channels=tuple(config.model.channels),
                dropout=tuple(config.model.dropout), norm=config.model.norm,
                projection_dim=config.model.projection_dim,
                projection_hidden=config.model.projection_hidden)
  raise ConfigError(f'model.name: unknown model {name!r}; known: unet')
