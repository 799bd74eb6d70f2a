"""3D networks (jaxseg/models/{dualstream,vnet,resnet3d}.py): parameter counts of the published
architectures, build_model's names, the DualStream's outputs (its train step: tests/training).

Full-size parameter counts come from `jax.eval_shape`, which compiles nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.dualstream import DualStream, mean_softmax_logits
from jaxseg.models.resnet3d import ResNet3D
from jaxseg.models.vnet import VNet


def _param_count(model, shape=(1, 112, 112, 80, 1)):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))


# Closed-form counts of the PyTorch originals (conv weights + biases, BN weight + bias), written
# from UA-MT's vnet.py and MCF's resnet.py / ResNet34.py, independently of the Flax code.
def _conv(k, cin, cout, bias=True):
  return k ** 3 * cin * cout + (cout if bias else 0)


def _vnet_decoder(n, num_classes):
  total = 0
  for level, layers in zip((3, 2, 1, 0), (3, 3, 2, 1)):
    c = n * 2 ** level
    total += _conv(2, 2 * c, c) + 2 * c  # ConvTranspose3d + BN
    total += layers * (_conv(3, c, c) + 2 * c)
  return total + _conv(1, n, num_classes)


def uamt_vnet_count(n=16, num_classes=2):
  total, cin = 0, 1
  for level, layers in enumerate((1, 2, 3, 3, 3)):
    c = n * 2 ** level
    if level:
      total += _conv(2, cin, c) + 2 * c  # stride-2 Conv3d + BN
      cin = c
    total += _conv(3, cin, c) + 2 * c + (layers - 1) * (_conv(3, c, c) + 2 * c)
    cin = c
  return total + _vnet_decoder(n, num_classes)


def mcf_resnet34_count(n=16, num_classes=2, blocks=(3, 4, 6, 3)):
  total = _conv(7, 1, n, bias=False) + 2 * n
  cin = n
  for stage, b in enumerate(blocks):
    p = n * 2 ** (stage + 1)
    total += _conv(3, cin, p, False) + _conv(3, p, p, False) + 4 * p  # first block
    total += _conv(1, cin, p, False) + 2 * p  # its 1x1 stride-2 shortcut + BN
    total += (b - 1) * (2 * _conv(3, p, p, False) + 4 * p)
    cin = p
  return total + _vnet_decoder(n, num_classes)


def test_vnet_parameter_count_matches_uamt():
  # 9,448,866: the "9.44M" V-Net of the UA-MT / MC-Net papers.
  assert uamt_vnet_count() == 9_448_866
  assert _param_count(VNet(num_classes=2)) == uamt_vnet_count()
  assert _param_count(VNet(num_classes=2, base_filters=4)) == uamt_vnet_count(4)


def test_resnet34_parameter_count_matches_mcf():
  assert _param_count(ResNet3D(num_classes=2)) == mcf_resnet34_count() == 17_930_354
  assert (_param_count(ResNet3D(num_classes=3, base_filters=4, blocks=(1, 2, 1, 1)))
          == mcf_resnet34_count(4, 3, (1, 2, 1, 1)))


def test_dualstream_parameters_are_the_two_subnets():
  dual = DualStream(VNet(num_classes=2), ResNet3D(num_classes=2))
  assert _param_count(dual) == uamt_vnet_count() + mcf_resnet34_count()


def test_mean_softmax_logits_closed_form():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 3, 4, 5, 3)) * 5
  a[0, 0, 0] = (80.0, -80.0, 0.0)  # saturated softmax: still finite, never log(0) = -inf
  got = np.asarray(jax.jit(mean_softmax_logits)(a.astype(np.float32), b.astype(np.float32)))
  softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(
      x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.exp(got), (softmax(a) + softmax(b)) / 2, rtol=1e-5, atol=1e-7)
  assert np.isfinite(got).all()


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
