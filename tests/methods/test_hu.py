"""Hu et al.'s local contrast term (jaxseg/methods/hu.py) through a real forward of a tiny U-Net:
each mode (stride, block, sampled, tiled, dense) and form against a numpy loop computed from the
network's own embeddings of the image and of its twin."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.losses import pixel_contrast
from jaxseg.methods import hu
from jaxseg.methods.term import Labeled, StepOutputs
from methods.pixel_reference import images, infonce, infonce_sums, tiny_unet

B, SIZE, K = 2, 8, 3


@pytest.fixture(scope='module')
def setup():
  config, apply = tiny_unet(('local_contrast',), num_classes=K, size=SIZE)
  config.local_contrast.update(weight=0.5, tau=0.2, stride=2, block=4, tile=16, num_per_class=8,
                               blocks_per_step=2)
  labels = jnp.asarray(np.random.default_rng(2).integers(0, K, (B, SIZE, SIZE)), jnp.int32)
  image, twin = images(0, B), images(1, B)
  out = StepOutputs(
      labeled=Labeled(image=image, label=labels, image_twin=twin), unlabeled=None,
      student_labeled=apply(image[..., None]), student_unlabeled=None, teacher_unlabeled=None,
      step=jnp.zeros((), jnp.int32), apply=apply, rng=jax.random.PRNGKey(7))
  # The two views' embeddings, by forwards of their own: (2B, H, W, D), image first.
  views = {'head': np.concatenate([apply(x[..., None])['pixel_embedding'] for x in (image, twin)]),
           'decoder': np.concatenate([apply(x[..., None])['decoder_features']
                                      for x in (image, twin)])}
  views['decoder'] /= np.linalg.norm(views['decoder'], axis=-1, keepdims=True)
  return config, out, views, np.concatenate([np.asarray(labels)] * 2)


def _expected(mode, form, emb, labels, c, rng):
  d = emb.shape[-1]
  if mode in ('dense', 'tiled'):
    return infonce(emb.reshape(-1, d), labels.ravel(), labels.ravel() > 0, c.tau, form)
  if mode == 'stride':
    sub, sub_labels = emb[:, ::c.stride, ::c.stride], labels[:, ::c.stride, ::c.stride]
    return infonce(sub.reshape(-1, d), sub_labels.ravel(), sub_labels.ravel() > 0, c.tau, form)
  if mode == 'block':  # one set per block position, holding that block of all 2B images
    means = []
    for y in range(0, SIZE, c.block):
      for x in range(0, SIZE, c.block):
        e = emb[:, y:y + c.block, x:x + c.block].reshape(-1, d)
        l = labels[:, y:y + c.block, x:x + c.block].ravel()
        total, count = infonce_sums(e, l, l > 0, c.tau, form)
        if count:
          means.append(total / count)
    return np.mean(means)
  # sampled: the term's draw of pixels (the library's sampler), the loss computed here.
  index, valid = pixel_contrast.sample_per_class(rng, jnp.asarray(labels.ravel()),
                                                 c.num_per_class, K)
  index, valid = np.asarray(index), np.asarray(valid)
  picked = labels.ravel()[index]
  return infonce(emb.reshape(-1, d)[index], picked, valid & (picked > 0), c.tau, form,
                 keys_N=valid)


@pytest.mark.parametrize('form', ['supcon', 'hu'])
@pytest.mark.parametrize('mode', hu.LOCAL_MODES)
def test_local_contrast_equals_the_loop_on_real_embeddings(setup, mode, form):
  config, out, views, labels = setup
  config.local_contrast.update(mode=mode, form=form, features='head')
  value, metrics = jax.jit(lambda: hu.local_contrast(out, config))()  # as traced in the step
  expected = _expected(mode, form, views['head'], labels, config.local_contrast, out.rng)
  np.testing.assert_allclose(metrics['local_contrast'], expected, rtol=2e-5)
  np.testing.assert_allclose(value, 0.5 * expected, rtol=2e-5)


def test_decoder_features_are_the_normalized_decoder_map(setup):
  config, out, views, labels = setup
  config.local_contrast.update(mode='tiled', form='supcon', features='decoder')
  _, metrics = hu.local_contrast(out, config)
  expected = _expected('tiled', 'supcon', views['decoder'], labels, config.local_contrast, None)
  np.testing.assert_allclose(metrics['local_contrast'], expected, rtol=2e-5)
  head = _expected('tiled', 'supcon', views['head'], labels, config.local_contrast, None)
  assert abs(expected - head) > 1e-3  # the two feature choices are different inputs


def test_the_twin_is_forwarded_not_reused(setup):
  """Contrasting the image with itself instead of its twin gives another value."""
  config, out, views, labels = setup
  config.local_contrast.update(mode='dense', form='supcon', features='head')
  same = np.concatenate([views['head'][:B]] * 2)
  _, metrics = hu.local_contrast(out, config)
  assert abs(float(metrics['local_contrast'])
             - _expected('dense', 'supcon', same, labels, config.local_contrast, None)) > 1e-3


def test_config_errors(setup):
  config, out, _, _ = setup
  config.local_contrast.update(mode='unknown', features='head')
  with pytest.raises(ConfigError, match='local_contrast.mode'):
    hu.local_contrast(out, config)
  config.local_contrast.mode = 'dense'
  with pytest.raises(ConfigError, match="data.labeled_views='twin'"):
    hu.local_contrast(dataclasses.replace(out, labeled=out.labeled.replace(image_twin=None)),
                      config)
