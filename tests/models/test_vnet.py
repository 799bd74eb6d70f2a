"""The V-Net (jaxseg/models/vnet.py): UA-MT's architecture, parameter for parameter."""

from jaxseg.models.vnet import VNet
from models.published_counts import param_count, uamt_vnet_count


def test_vnet_parameter_count_matches_uamt():
  # 9,448,866: the "9.44M" V-Net of the UA-MT / MC-Net papers.
  assert uamt_vnet_count() == 9_448_866
  assert param_count(VNet(num_classes=2)) == uamt_vnet_count()
  assert param_count(VNet(num_classes=2, base_filters=4)) == uamt_vnet_count(4)
