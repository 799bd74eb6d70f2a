"""Dense supervised pixel InfoNCE against hand-computed values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.losses.pixel_contrast import pixel_infonce_dense


def _reference(emb, labels, anchors, tau, form):
  s = emb @ emb.T / tau
  total, count = 0.0, 0
  for i in range(len(labels)):
    pos = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
    if not anchors[i] or not pos:
      continue
    neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
    terms = []
    for p in pos:
      if form == 'supcon':
        den = sum(np.exp(s[i, j]) for j in range(len(labels)) if j != i)
      else:
        den = np.exp(s[i, p]) + sum(np.exp(s[i, j]) for j in neg)
      terms.append(-np.log(np.exp(s[i, p]) / den))
    total += np.mean(terms)
    count += 1
  return total / max(count, 1)


class PixelInfoNCETest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loop_reference(self):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 1, 1, 2, 2, 2, 0, 1, 3])  # class 3 has no positive
    anchors = labels > 0
    for form in ('supcon', 'hu'):
      got = self.variant(pixel_infonce_dense, static_argnames=('form',))(
          jnp.asarray(emb, jnp.float32), labels, anchors, 0.5, form=form)
      np.testing.assert_allclose(got, _reference(emb, labels, anchors, 0.5, form), rtol=1e-5)

  def test_no_valid_anchor_is_zero_with_zero_gradient(self):
    emb = jnp.eye(3)
    labels = jnp.array([0, 1, 2])
    value, grad = jax.value_and_grad(pixel_infonce_dense)(emb, labels, labels > 0)
    assert value == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(emb))

  def test_small_temperature_stays_finite(self):
    emb = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([1, 1, 2])
    for form in ('supcon', 'hu'):
      value, grad = jax.value_and_grad(pixel_infonce_dense)(emb, labels, labels > 0, 1e-3, form)
      chex.assert_tree_all_finite((value, grad))
