"""`build_model` (jaxseg/models/__init__.py): every network by its config name; unknown ones refused."""

import pytest

from jaxseg import config as config_lib
from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.dualstream import DualStream
from jaxseg.models.resnet3d import ResNet3D
from jaxseg.models.vnet import VNet


def test_build_model_names_and_errors():
  c = config_lib.base_config()
  c.num_classes = 2
  for name, cls in (('vnet', VNet), ('resnet3d', ResNet3D), ('dualstream', DualStream)):
    c.model.name = name
    assert isinstance(build_model(c), cls)
  c.model.name = 'dualstream'
  c.model.subnets = ('vnet', 'unet')
  with pytest.raises(ConfigError, match='model.subnets'):
    build_model(c)
