"""The fast convolution path computes XLA's function: values, input and weight gradients of every
convolution shape the models use, the same parameters, and the same losses over a few steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config, train_setup
from jaxseg.errors import ConfigError
from jaxseg.models import build_model, layers
from jaxseg.training import schedules, step as step_lib

# (name, input shape, kernel, strides, padding, out channels, transposed): each kind of
# convolution in unet.py, vnet.py and resnet3d.py, at tiny sizes (odd sides where the model
# allows them, so VALID's dropped remainder and stride-2 padding are covered).
CONVS = [
    ('unet 3x3 same', (2, 12, 10, 3), (3, 3), (1, 1), 'SAME', 5, False),
    ('unet 3x3 small map (im2col)', (2, 4, 3, 6), (3, 3), (1, 1), 'SAME', 4, False),
    ('unet 1x1 reduce / pixel head', (2, 6, 5, 6), (1, 1), (1, 1), 'SAME', 3, False),
    ('vnet 3x3x3 pad 1', (2, 6, 5, 4, 3), (3, 3, 3), (1, 1, 1), 1, 4, False),
    ('vnet 3x3x3 bottleneck (im2col)', (1, 3, 3, 2, 6), (3, 3, 3), (1, 1, 1), 1, 5, False),
    ('vnet k2 s2 down', (2, 6, 4, 4, 3), (2, 2, 2), (2, 2, 2), 'VALID', 5, False),
    ('vnet k2 s2 down, odd sides', (1, 5, 4, 3, 2), (2, 2, 2), (2, 2, 2), 'VALID', 3, False),
    ('vnet k2 s2 transposed', (2, 3, 2, 2, 4), (2, 2, 2), (2, 2, 2), 'VALID', 3, True),
    ('2d k2 s2 transposed', (2, 3, 4, 4), (2, 2), (2, 2), 'VALID', 3, True),
    ('vnet 1x1x1 classifier', (2, 4, 4, 3, 4), (1, 1, 1), (1, 1, 1), 'SAME', 2, False),
    ('resnet 7x7x7 stem pad 3', (1, 8, 7, 6, 1), (7, 7, 7), (1, 1, 1), 3, 3, False),
    ('resnet 3x3x3 s2 pad 1', (2, 7, 6, 5, 3), (3, 3, 3), (2, 2, 2), 1, 4, False),
    ('resnet 1x1x1 s2 shortcut', (2, 7, 6, 4, 3), (1, 1, 1), (2, 2, 2), 'VALID', 4, False),
]


def _value_and_grads(conv):
  """{impl: (value, input grad, weight grad)} for 'xla' and 'fast', in one compiled program."""
  _, shape, kernel, strides, padding, out_c, transposed = conv
  op = layers.conv_transpose if transposed else layers.conv

  @jax.jit
  def run(x, w, g):
    out = {}
    for impl in ('xla', 'fast'):
      y, vjp = jax.vjp(lambda x, w: op(x, w, strides, padding, impl), x, w)
      out[impl] = (y, *vjp(g))
    return out

  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (*kernel, shape[-1], out_c))
  y_shape = jax.eval_shape(lambda x, w: op(x, w, strides, padding, 'xla'), x, w).shape
  return run(x, w, jax.random.normal(kg, y_shape))


@pytest.mark.parametrize('conv', CONVS, ids=[c[0] for c in CONVS])
def test_fast_conv_equals_xla_value_and_both_gradients(conv):
  out = _value_and_grads(conv)
  for name, e, g in zip(('value', 'input grad', 'weight grad'), out['xla'], out['fast']):
    assert g.shape == e.shape, name
    scale = float(jnp.abs(e).max())
    assert scale > 0, name  # a zero reference would make the comparison empty
    np.testing.assert_allclose(g, e, rtol=0, atol=2e-5 * scale, err_msg=name)


def test_xla_impl_is_lax_itself():
  # The reference above is lax.conv_general_dilated / conv_transpose as flax's layers call them.
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 4, 3))
  w = jax.random.normal(jax.random.key(2), (2, 2, 2, 3, 5))
  dims = ('NDHWC', 'DHWIO', 'NDHWC')
  np.testing.assert_array_equal(
      layers.conv_transpose(x, w, (2, 2, 2), 'VALID', 'xla'),
      jax.lax.conv_transpose(x, w, (2, 2, 2), 'VALID', dimension_numbers=dims))


@pytest.mark.parametrize('fast, ref, kwargs', [
    (layers.Conv, nn.Conv, dict(kernel_size=(3, 3, 3), padding=1)),
    (layers.Conv, nn.Conv, dict(kernel_size=(1, 1), use_bias=False)),
    (layers.ConvTranspose, nn.ConvTranspose,
     dict(kernel_size=(2, 2, 2), strides=(2, 2, 2), padding='VALID')),
])
def test_layers_are_drop_ins_for_flax(fast, ref, kwargs):
  x = jax.random.normal(jax.random.key(4), (2,) + (4,) * len(kwargs['kernel_size']) + (3,))
  v_ref = ref(5, **kwargs).init(jax.random.key(5), x)
  for impl in ('xla', 'fast'):
    layer = fast(5, impl=impl, **kwargs)
    v = layer.init(jax.random.key(5), x)
    jax.tree.map(np.testing.assert_array_equal, v, v_ref)  # same names, shapes, values
    np.testing.assert_allclose(layer.apply(v, x), ref(5, **kwargs).apply(v_ref, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('experiment', ['acdc_meanteacher', 'la_dualstream'])
def test_parameters_are_the_same_under_both_impls(experiment):
  trees = []
  for impl in ('xla', 'fast'):
    config = tiny_config(experiment)
    with config.unlocked():
      config.model.conv_impl = impl
    trees.append(step_lib.init_state(build_model(config), schedules.optimizer(config),
                                     config).params)
  jax.tree.map(np.testing.assert_array_equal, *trees)


def test_conv_impl_is_checked_and_auto_resolves_by_backend():
  config = tiny_config('smoke')
  with config.unlocked():
    config.model.conv_impl = 'cudnn'
  with pytest.raises(ConfigError, match='model.conv_impl'):
    build_model(config)
  expected = 'fast' if jax.default_backend() == 'cpu' else 'xla'
  assert layers.resolve_impl('auto') == expected
  assert layers.resolve_impl('xla') == 'xla'


def _losses(config, steps):
  _, jitted, state, batches, mesh = train_setup(config)
  losses = []
  for _ in range(steps):
    labeled, unlabeled = (step_lib.shard_batch(b, mesh) for b in next(batches))
    state, metrics = jitted(state, labeled, unlabeled)
    losses.append(float(metrics['loss']))
  return np.array(losses)


@pytest.mark.parametrize('experiment', ['acdc_supervised', 'la_meanteacher'])
def test_short_training_run_has_the_same_losses(experiment):
  runs = {}
  for impl in ('xla', 'fast'):
    config = tiny_config(experiment)
    with config.unlocked():
      config.model.conv_impl = impl
      if config.data.crop_shape:
        # The tiny 16^3 crop leaves V-Net's bottleneck one voxel per volume: batch norm over 4
        # values there amplifies float rounding ~1000x (a 1e-7 change of the weights moves the
        # gradient norm by 1e-4 relative; the two paths' gradient norms differed by 0.4% on one
        # CI-like machine). At 32^3 the bottleneck has 8 voxels per volume and the two paths'
        # gradient norms agree to 3e-5.
        config.data.crop_shape = (32, 32, 32)
    runs[impl] = _losses(config, 3)
  assert np.all(np.isfinite(runs['xla'])) and runs['xla'][-1] != runs['xla'][0]
  # Same function, different summation order: float32 rounding, grown over 3 optimizer steps.
  np.testing.assert_allclose(runs['fast'], runs['xla'], rtol=1e-4)
