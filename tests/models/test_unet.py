"""The 2D U-Net (jaxseg/models/unet.py): outputs, a pure apply, SSL4MIS's parameter count."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from conftest import tiny_config
from jaxseg import config as config_lib
from jaxseg.models import build_model


def test_model_outputs_and_pure_apply():
  config = tiny_config('smoke')
  model = build_model(config)
  x = jnp.ones((2, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x, train=False)
  chex.assert_shape(out['logits'], (2, 32, 32, 4))
  chex.assert_shape(out['decoder_features'], (2, 32, 32, 4))
  chex.assert_shape(out['bottleneck'], (2, 8, 8, 16))
  again = model.apply(variables, x, train=False)
  chex.assert_trees_all_equal(out, again)  # a pure function of (variables, input)
  with config.unlocked():
    config.model.norm = 'group'
  gn = build_model(config)
  gv = gn.init(jax.random.PRNGKey(0), x)
  assert 'batch_stats' not in gv
  chex.assert_shape(gn.apply(gv, x)['logits'], (2, 32, 32, 4))


def _ssl4mis_unet_parameter_count(channels=(16, 32, 64, 128, 256), classes=4):
  """Counted from SSL4MIS networks/unet.py's layer list (PyTorch convs have biases)."""
  conv = lambda i, o, k=3: i * o * k * k + o
  block = lambda i, o: conv(i, o) + 2 * o + conv(o, o) + 2 * o  # conv-BN-conv-BN
  n = block(1, channels[0]) + sum(block(a, b) for a, b in zip(channels, channels[1:]))
  for low, high in zip(channels, channels[1:]):  # UpBlock: 1x1 conv, then ConvBlock on the concat
    n += conv(high, low, 1) + block(2 * low, low)
  return n + conv(channels[0], classes)


def test_default_unet_matches_ssl4mis_size():
  config = config_lib.base_config()
  model = build_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1))))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params']))
  assert count == _ssl4mis_unet_parameter_count() == 1_813_764
