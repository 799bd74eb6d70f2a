"""The 3D ResNet-34 encoder-decoder (jaxseg/models/resnet3d.py): MCF's, parameter for parameter."""

from jaxseg.models.resnet3d import ResNet3D
from models.published_counts import mcf_resnet34_count, param_count


def test_resnet34_parameter_count_matches_mcf():
  assert param_count(ResNet3D(num_classes=2)) == mcf_resnet34_count() == 17_930_354
  assert (param_count(ResNet3D(num_classes=3, base_filters=4, blocks=(1, 2, 1, 1)))
          == mcf_resnet34_count(4, 3, (1, 2, 1, 1)))
