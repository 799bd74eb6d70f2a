"""The dual-stream network (jaxseg/models/dualstream.py): two subnets on one input, their mean
softmax (its loss term and train step: tests/methods/test_dualstream.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.models import build_model
from jaxseg.models.dualstream import DualStream, mean_softmax_logits
from jaxseg.models.resnet3d import ResNet3D
from jaxseg.models.vnet import VNet
from models.published_counts import mcf_resnet34_count, param_count, uamt_vnet_count


def test_dualstream_parameters_are_the_two_subnets():
  dual = DualStream(VNet(num_classes=2), ResNet3D(num_classes=2))
  assert param_count(dual) == uamt_vnet_count() + mcf_resnet34_count()


def test_mean_softmax_logits_closed_form():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 3, 4, 5, 3)) * 5
  a[0, 0, 0] = (80.0, -80.0, 0.0)  # saturated softmax: still finite, never log(0) = -inf
  got = np.asarray(jax.jit(mean_softmax_logits)(a.astype(np.float32), b.astype(np.float32)))
  softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(
      x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.exp(got), (softmax(a) + softmax(b)) / 2, rtol=1e-5, atol=1e-7)
  assert np.isfinite(got).all()


@pytest.fixture(scope='module')
def tiny():
  """DualStream (V-Net + ResNet) at the smallest widths and its variables, on 16^3 crops."""
  c = config_lib.base_config()
  c.num_classes = 2
  c.model.update(name='dualstream', base_filters=2, resnet_blocks=(1, 1, 1, 1))
  model = build_model(c)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)), train=False)
  return c, model, variables


def test_dualstream_forward(tiny):
  c, model, variables = tiny
  x = np.random.default_rng(0).random((2, 16, 16, 16, 1), dtype=np.float32)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  for key in ('logits', 'logits_a', 'logits_b'):
    assert out[key].shape == (2, 16, 16, 16, 2)
  for key in ('features_a', 'features_b'):
    assert out[key].shape == (2, 16, 16, 16, c.model.base_filters)
  np.testing.assert_allclose(out['logits'], mean_softmax_logits(out['logits_a'], out['logits_b']),
                             rtol=1e-5, atol=1e-6)
  # The two subnets are different networks: their predictions differ.
  assert not np.allclose(out['logits_a'], out['logits_b'])
