"""The Hu et al. and LCLPL loss terms on fixed embeddings: every mode and form runs, and the
exact modes agree (the networks are exercised by the experiment tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.methods import hu, lclpl
from jaxseg.training.objectives import StepOutputs


def _outputs(b=2, size=8, dim=4, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  labels = jax.random.randint(keys[0], (b, size, size), 0, 3)
  emb = lambda k: jax.random.normal(k, (b, size, size, dim))
  student = {'pixel_embedding': emb(keys[1]), 'decoder_features': emb(keys[1])}
  twin = {'pixel_embedding': emb(keys[2]), 'decoder_features': emb(keys[2])}
  images = jnp.zeros((b, size, size))
  out = StepOutputs(
      labeled={'image': images, 'image_twin': images, 'label': labels},
      unlabeled={'image_weak': images, 'image_strong': images, 'label': labels},
      student_labeled=student, student_unlabeled=student, teacher_unlabeled=None,
      step=jnp.zeros((), jnp.int32),
      apply=lambda x, method=None: jax.tree.map(lambda a: jnp.concatenate([a] * (
          x.shape[0] // a.shape[0])), twin),
      rng=keys[3])
  return out


def _config():
  c = config_lib.base_config()
  c.num_classes = 3
  c.model.pixel_projection_dim = 4
  c.data.labeled_views = 'twin'
  c.local_contrast.update(block=4, stride=2, tile=16, num_per_class=8)
  return c


def test_local_contrast_modes_run_and_exact_modes_agree():
  out, c = _outputs(), _config()
  values = {}
  for mode in hu.LOCAL_MODES:
    c.local_contrast.mode = mode
    values[mode], metrics = hu.local_contrast(out, c)
    assert np.isfinite(values[mode]) and metrics['local_contrast'] == values[mode]
  np.testing.assert_allclose(values['tiled'], values['dense'], rtol=1e-5)
  c.local_contrast.mode = 'unknown'
  with pytest.raises(Exception, match='local_contrast.mode'):
    hu.local_contrast(out, c)


def test_lclpl_forms_run():
  out, c = _outputs(), _config()
  for form in lclpl.FORMS:
    c.lclpl.form = form
    value, metrics = lclpl.lclpl(out, c)
    assert np.isfinite(value) and value == pytest.approx(c.lclpl.weight * metrics['lclpl'])
