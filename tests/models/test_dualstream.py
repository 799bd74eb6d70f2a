"""3D networks: parameter counts of the published architectures, outputs, a DualStream step.

Compiling 3D programs dominates the time here, so one tiny DualStream state (one init program)
serves the forward and train-step tests; full-size parameter counts come from `jax.eval_shape`,
which compiles nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.data import datasets, pipeline
from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.dualstream import DualStream, mean_softmax_logits
from jaxseg.models.resnet3d import ResNet3D
from jaxseg.models.vnet import VNet
from jaxseg.training import schedules, step as step_lib


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


def tiny_3d_config(**data):
  """DualStream (V-Net + ResNet) at the smallest widths, on 16^3 crops of the 3D phantom."""
  c = config_lib.base_config()
  c.num_classes = 2
  c.class_names = ('target',)
  c.data.crop_shape = (16, 16, 16)
  c.data.labeled_num = 2
  c.data.synthetic3d.update(dict(num_train=4, num_val=1, num_test=1, size=20))
  c.data.labeled_batch = 2
  c.data.unlabeled_batch = 2
  c.data.read_threads = 1
  c.data.update(data)
  c.model.name = 'dualstream'
  c.model.base_filters = 2
  c.model.resnet_blocks = (1, 1, 1, 1)
  c.losses = ('supervised',)
  c.steps = 10
  return c


@pytest.fixture(scope='module')
def tiny():
  c = tiny_3d_config()
  model = build_model(c)
  tx = schedules.optimizer(c)
  return c, model, tx, step_lib.init_state(model, tx, c)


def test_init_uses_the_3d_crop(tiny):
  c, _, _, state = tiny
  assert step_lib.input_shape(c) == (1, 16, 16, 16, 1)
  c2 = config_lib.base_config()
  assert step_lib.input_shape(c2) == (1, 256, 256, 1)
  # The first conv of each subnet sees one input channel; the classifiers give K = 2.
  assert state.params['subnet_a']['enc0']['conv0']['kernel'].shape == (3, 3, 3, 1, 2)
  assert state.params['subnet_b']['encoder']['stem']['kernel'].shape == (7, 7, 7, 1, 2)
  assert state.params['subnet_b']['decoder']['classifier']['kernel'].shape == (1, 1, 1, 2, 2)


def test_dualstream_forward(tiny):
  c, model, _, state = tiny
  x = np.random.default_rng(0).random((2, 16, 16, 16, 1), dtype=np.float32)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      {'params': state.params, 'batch_stats': state.batch_stats}, x)
  for key in ('logits', 'logits_a', 'logits_b'):
    assert out[key].shape == (2, 16, 16, 16, 2)
  for key in ('features_a', 'features_b'):
    assert out[key].shape == (2, 16, 16, 16, c.model.base_filters)
  np.testing.assert_allclose(out['logits'], mean_softmax_logits(out['logits_a'], out['logits_b']),
                             rtol=1e-5, atol=1e-6)
  # The two subnets are different networks: their predictions differ.
  assert not np.allclose(out['logits_a'], out['logits_b'])


def test_dualstream_supervised_step_on_synthetic_3d(tiny):
  c, model, tx, state = tiny
  data = datasets.load_data(c)
  assert data.layout == 'synthetic3d'
  train_step = step_lib.make_train_step(model, tx, c)
  mesh = step_lib.make_mesh(1)
  jitted = step_lib.jit_train_step(train_step, mesh)
  iterator = pipeline.make_train_iterator(data, c, train_step.needs_unlabeled)
  state = step_lib.replicate(jax.tree.map(jnp.copy, state), mesh)  # the fixture's is not donated
  before = jax.device_get(state.params)
  losses = []
  for _ in range(2):
    labeled, unlabeled = next(iterator)
    assert labeled['image'].shape == (2, 16, 16, 16) and labeled['label'].shape == (2, 16, 16, 16)
    state, metrics = jitted(state, step_lib.shard_batch(labeled, mesh),
                            step_lib.shard_batch(unlabeled, mesh))
    losses.append(float(metrics['loss']))
  assert int(state.step) == 2
  assert np.isfinite(losses).all() and 0 < losses[0] < 5
  # Both subnets are trained by the supervised loss on the averaged prediction.
  for subnet in ('subnet_a', 'subnet_b'):
    delta = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         state.params[subnet], before[subnet])
    assert max(jax.tree.leaves(delta)) > 0
