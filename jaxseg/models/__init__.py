"""Segmentation networks: Flax modules whose `apply` is a pure function of (variables, images)."""

from jaxseg.models.unet import UNet
from jaxseg.errors import ConfigError


def build_model(config) -> UNet:
  """The network named by `config.model` (a ConfigDict with `name` and its arguments)."""
  name = config.model.name
  if name == 'unet':
    return UNet(num_classes=config.num_classes, channels=tuple(config.model.channels),
                dropout=tuple(config.model.dropout), norm=config.model.norm)
  raise ConfigError(f'model.name: unknown model {name!r}; known: unet')
