"""The LCLPL term (jaxseg/methods/lclpl.py) through a real forward of a tiny U-Net: both forms
against numpy computed from the network's own embeddings of the labeled images, the unlabeled
strong views and their twins (labeled twins, unlabeled weak views)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.losses import pixel_contrast
from jaxseg.methods import lclpl
from jaxseg.methods.term import Labeled, StepOutputs, Unlabeled
from methods.pixel_reference import images, infonce, tiny_unet

B, SIZE, K, ANCHORS = 2, 8, 4, 2  # classes 1..3: an image may miss one and still contrast


def _labels(seed, missing_class_3_in_last=False):
  labels = np.random.default_rng(seed).integers(0, K, (B, SIZE, SIZE))
  if missing_class_3_in_last:
    labels[-1][labels[-1] == 3] = 1
  return jnp.asarray(labels, jnp.int32)


@pytest.fixture(scope='module')
def setup():
  config, apply = tiny_unet(('supervised', 'lclpl'), num_classes=K, size=SIZE)
  config.lclpl.update(weight=0.1, tau=0.1, num_anchors=ANCHORS, tile=16)
  image, twin, weak, strong = (images(seed, B) for seed in range(4))
  label = _labels(4)
  pseudo = _labels(5, missing_class_3_in_last=True)  # an image without every class
  out = StepOutputs(
      labeled=Labeled(image=image, label=label, image_twin=twin),
      unlabeled=Unlabeled(image_weak=weak, image_strong=strong, label=pseudo),
      student_labeled=apply(image[..., None]), student_unlabeled=apply(strong[..., None]),
      teacher_unlabeled=None, step=jnp.zeros((), jnp.int32), apply=apply,
      rng=jax.random.PRNGKey(11))
  # Main view: labeled images and unlabeled strong views; twin view: their twins / weak views.
  emb = lambda xs: np.concatenate([apply(x[..., None])['pixel_embedding'] for x in xs])
  views = [emb((image, strong)), emb((twin, weak))]
  labels = np.concatenate([np.asarray(label), np.asarray(pseudo)])
  return config, out, views, labels


def _unit(x):
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.where(n > 0, n, 1.0)


def authors_loss(rng, views, labels, tau, require_all_classes):
  """LCLPL's code, one anchor at a time: anchors drawn per view and image (the library's sampler
  with the term's keys), each against the class means of every view of its image."""
  b, h, w = labels.shape
  flat = labels.reshape(b, -1)
  fg = range(1, K)
  means, anchors = [], []  # per view: (b, K, D) means; [(image, class, unit embedding)]
  for emb, key in zip(views, jax.random.split(rng, len(views))):
    e = np.asarray(emb, np.float64).reshape(b, h * w, -1)
    means.append(np.stack([[_unit(e[i][flat[i] == k].mean(0)) if (flat[i] == k).any()
                            else np.zeros(e.shape[-1]) for k in range(K)] for i in range(b)]))
    drawn = []
    for i, image_key in enumerate(jax.random.split(key, b)):
      index, ok = pixel_contrast.sample_per_class(image_key, jnp.asarray(flat[i]), ANCHORS, K)
      drawn += [(i, slot // ANCHORS, _unit(e[i][int(index[slot])]))
                for slot in range(K * ANCHORS) if ok[slot]]
    anchors.append(drawn)
  losses = []
  for drawn in anchors:
    for i, c, a in drawn:
      present = [k for k in fg if (flat[i] == k).any()]
      if c not in present or len(present) < (K - 1 if require_all_classes else 2):
        continue
      logits = np.array([[a @ m[i][k] / tau for k in present] for m in means])
      lse = np.log(np.exp(logits).sum())
      losses.append(sum(lse - a @ m[i][c] / tau for m in means))
  return np.mean(losses)


@pytest.mark.parametrize('require_all_classes', [True, False])
def test_authors_form_equals_the_loop_on_real_embeddings(setup, require_all_classes):
  config, out, views, labels = setup
  config.lclpl.update(form='authors', require_all_classes=require_all_classes)
  value, metrics = jax.jit(lambda: lclpl.lclpl(out, config))()  # as traced in the step
  expected = authors_loss(out.rng, views, labels, 0.1, require_all_classes)
  np.testing.assert_allclose(metrics['lclpl'], expected, rtol=2e-5)
  np.testing.assert_allclose(value, 0.1 * expected, rtol=2e-5)


def test_the_image_missing_a_class_counts_only_without_require_all_classes(setup):
  config, out, views, labels = setup
  config.lclpl.form = 'authors'
  values = {}
  for flag in (True, False):
    config.lclpl.require_all_classes = flag
    values[flag] = float(lclpl.lclpl(out, config)[1]['lclpl'])
  assert abs(values[True] - values[False]) > 1e-4


def test_pixel_form_equals_the_loop_on_real_embeddings(setup):
  config, out, views, labels = setup
  config.lclpl.form = 'pixel'
  value, metrics = jax.jit(lambda: lclpl.lclpl(out, config))()
  emb = np.concatenate(views).reshape(-1, views[0].shape[-1])
  both = np.concatenate([labels, labels]).ravel()
  expected = infonce(emb, both, both > 0, 0.1, 'supcon')
  np.testing.assert_allclose(metrics['lclpl'], expected, rtol=2e-5)
  np.testing.assert_allclose(value, 0.1 * expected, rtol=2e-5)


def test_config_errors(setup):
  config, out, _, _ = setup
  config.lclpl.form = 'mean'
  with pytest.raises(ConfigError, match='lclpl.form'):
    lclpl.lclpl(out, config)
  config.lclpl.form = 'authors'
  with pytest.raises(ConfigError, match='needs pseudo-labels'):
    lclpl.lclpl(dataclasses.replace(out, unlabeled=out.unlabeled.replace(label=None)), config)
