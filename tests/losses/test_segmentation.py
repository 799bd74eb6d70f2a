"""Supervised and consistency losses (jaxseg/losses/segmentation.py) against hand-computed values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.losses import segmentation


def _logits_for(probs):
  return jnp.log(jnp.asarray(probs, jnp.float32))


class CrossEntropyDiceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_entropy_hand_computed(self):
    # Two pixels, three classes: CE = -(log 0.7 + log 0.2) / 2.
    probs = np.array([[[[0.7, 0.2, 0.1], [0.5, 0.2, 0.3]]]])
    labels = np.array([[[0, 1]]])
    got = self.variant(segmentation.cross_entropy)(_logits_for(probs), labels)
    np.testing.assert_allclose(got, -(np.log(0.7) + np.log(0.2)) / 2, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_dice_hand_computed(self):
    probs = np.array([[[[0.7, 0.2, 0.1], [0.5, 0.2, 0.3]]]])
    labels = np.array([[[0, 1]]])
    # Per class c: 1 - 2 * sum(p_c y_c) / (sum(p_c^2) + sum(y_c)).
    p, y = probs.reshape(2, 3), np.eye(3)[[0, 1]]
    expected = np.mean(1 - 2 * (p * y).sum(0) / ((p**2).sum(0) + y.sum(0)))
    got = self.variant(segmentation.soft_dice_loss)(_logits_for(probs), labels)
    np.testing.assert_allclose(got, expected, rtol=1e-4)  # smoothing 1e-5 is in the tolerance

  def test_perfect_prediction_has_zero_dice_loss(self):
    labels = np.array([[[0, 1], [2, 1]]])
    logits = 50.0 * jax.nn.one_hot(labels, 3)
    np.testing.assert_allclose(segmentation.soft_dice_loss(logits, labels), 0.0, atol=1e-6)
    np.testing.assert_allclose(segmentation.ce_dice_loss(logits, labels), 0.0, atol=1e-6)

  def test_absent_class_is_finite(self):
    labels = np.zeros((2, 4, 4), np.int32)  # classes 1..3 absent
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4))
    value, grad = jax.value_and_grad(segmentation.ce_dice_loss)(logits, labels)
    chex.assert_tree_all_finite((value, grad))

  def test_ce_dice_is_half_the_sum(self):
    logits = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 4))
    labels = jax.random.randint(jax.random.PRNGKey(2), (2, 5, 5), 0, 4)
    np.testing.assert_allclose(
        segmentation.ce_dice_loss(logits, labels),
        0.5 * (segmentation.cross_entropy(logits, labels) +
               segmentation.soft_dice_loss(logits, labels)), rtol=1e-6)


class ConsistencyTest(chex.TestCase):

  def test_mse_hand_computed(self):
    student = _logits_for([[[[0.5, 0.5]]]])
    teacher = _logits_for([[[[0.9, 0.1]]]])
    np.testing.assert_allclose(segmentation.softmax_mse(student, teacher), 0.4**2, rtol=1e-5)

  def test_soft_ce_hand_computed(self):
    student = _logits_for([[[[0.5, 0.5]]]])
    teacher = _logits_for([[[[0.9, 0.1]]]])
    np.testing.assert_allclose(segmentation.softmax_cross_entropy(student, teacher),
                               -np.log(0.5), rtol=1e-5)
    np.testing.assert_allclose(segmentation.hard_cross_entropy(student, teacher),
                               -np.log(0.5), rtol=1e-5)

  def test_soft_consistency_is_stationary_where_student_matches_teacher(self):
    student = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 3, 4))
    teacher = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 3, 4))
    for name in ('mse', 'ce'):
      grad = jax.grad(segmentation.CONSISTENCY_LOSSES[name])
      np.testing.assert_allclose(grad(teacher, teacher), 0.0, atol=1e-7)
      assert np.abs(grad(student, teacher)).max() > 1e-3, name

