"""Dual-stream 3D losses (jaxseg/losses/dualstream.py, eqs. 1-7): masked CE + Dice, entropy
filtering, pseudo-label selection, L_reg and the prototype contrast against hand-computed values;
schedules at t = 0 and t_max; no NaN on empty sets."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.losses import dualstream as ds
from jaxseg.training import schedules


def _logits(probs):
  return jnp.log(jnp.asarray(probs, jnp.float32))


# ------------------------------------------------------------------------------------------------


class CeDiceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_masked_ce_and_dice_hand_computed(self):
    # Four voxels (1, 1, 2, 2), two classes; the mask keeps voxels 0, 1 and 3.
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 0])
    mask = np.array([True, True, False, True])
    shape = (1, 1, 2, 2)
    fn = self.variant(functools.partial(ds.ce_dice, background=False))
    ce, dice = fn(_logits(probs.reshape(shape + (2,))), labels.reshape(shape), mask.reshape(shape))
    np.testing.assert_allclose(ce, -(np.log(0.8) + np.log(0.7) + np.log(0.1)) / 3, rtol=1e-6)
    # Foreground Dice over voxels 0, 1, 3: p1 = (.2, .7, .9), y1 = (0, 1, 0).
    p1, y1 = np.array([0.2, 0.7, 0.9]), np.array([0, 1, 0])
    np.testing.assert_allclose(dice, 1 - 2 * 0.7 / ((p1**2).sum() + y1.sum()), rtol=1e-4)
    # With the background class, the mean of both classes' Dice losses.
    _, dice_all = ds.ce_dice(_logits(probs.reshape(shape + (2,))), labels.reshape(shape),
                             mask.reshape(shape), background=True)
    p0, y0 = np.array([0.8, 0.3, 0.1]), np.array([1, 0, 1])
    dice0 = 1 - 2 * (0.8 + 0.1) / ((p0**2).sum() + y0.sum())
    np.testing.assert_allclose(dice_all, (dice0 + float(dice)) / 2, rtol=1e-4)
    # Without a mask: every voxel.
    ce_all, _ = ds.ce_dice(_logits(probs.reshape(shape + (2,))), labels.reshape(shape))
    np.testing.assert_allclose(ce_all, -np.mean(np.log([0.8, 0.7, 0.4, 0.1])), rtol=1e-6)

  def test_empty_mask_gives_zero_loss_and_zero_gradient(self):
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 2, 2, 3)), jnp.float32)
    labels = jnp.zeros((1, 2, 2, 2), jnp.int32)
    mask = jnp.zeros((1, 2, 2, 2), bool)
    loss = lambda x: sum(ds.ce_dice(x, labels, mask))
    value, grad = jax.jit(jax.value_and_grad(loss))(logits)
    assert float(value) == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(grad))


class EntropyFilterTest(chex.TestCase):

  def test_normalized_entropy_limits(self):
    probs = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    ent = ds.normalized_entropy(probs)
    expected = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    np.testing.assert_allclose(ent, [1.0, 0.0, expected], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds.normalized_entropy(jnp.full((4,), 0.25)), 1.0, rtol=1e-6)
    chex.assert_tree_all_finite(jax.grad(lambda p: ds.normalized_entropy(p).sum())(probs))

  @chex.variants(with_jit=True, without_jit=True)
  def test_threshold_and_percentile(self):
    ent = jnp.array([0.0, 0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 1, 5)
    threshold = self.variant(functools.partial(ds.reliable_mask, mode='threshold', threshold=0.25))
    np.testing.assert_array_equal(threshold(ent).ravel(), [1, 1, 1, 0, 0])
    # 80th percentile, linear interpolation: 0.3 + 0.2 * 0.1 = 0.32 -> 4 of 5 reliable.
    pct = self.variant(functools.partial(ds.reliable_mask, mode='percentile', percentile=80.0))
    np.testing.assert_array_equal(pct(ent).ravel(), [1, 1, 1, 1, 0])
    # A voxel exactly at the percentile (the median, 0.2) is unreliable.
    pct = self.variant(functools.partial(ds.reliable_mask, mode='percentile', percentile=50.0))
    np.testing.assert_array_equal(pct(ent).ravel(), [1, 1, 0, 0, 0])

  def test_unknown_mode_raises(self):
    with pytest.raises(ValueError):
      ds.reliable_mask(jnp.zeros(3), mode='quantile')


class PseudoLabelTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_selects_the_subnet_with_lower_supervised_loss(self):
    probs_a = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    probs_b = jnp.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    rel_a, rel_b = jnp.array([True, False, True]), jnp.array([False, True, True])
    fn = self.variant(ds.select_pseudo_label)
    labels, reliable = fn(probs_a, probs_b, rel_a, rel_b, jnp.array(False))
    np.testing.assert_array_equal(labels, [0, 0, 1])
    np.testing.assert_array_equal(reliable, rel_a)
    labels, reliable = fn(probs_a, probs_b, rel_a, rel_b, jnp.array(True))
    np.testing.assert_array_equal(labels, [1, 0, 1])
    np.testing.assert_array_equal(reliable, rel_b)
    # The code's union: foreground where either says so; unreliable only where both are.
    labels, reliable = ds.union_pseudo_label(probs_a, probs_b, rel_a, rel_b)
    np.testing.assert_array_equal(labels, [1, 0, 1])
    np.testing.assert_array_equal(reliable, [True, True, True])


# ------------------------------------------------------------------------------------------------


def _reg_volumes():
  """(1, 1, 2, 2, 2) softmax maps of both subnets; see the test for which voxels disagree."""
  a = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.75, 0.25]], np.float32)
  b = np.array([[0.15, 0.85], [0.6, 0.4], [0.05, 0.95], [0.25, 0.75]], np.float32)
  return a.reshape(1, 1, 2, 2, 2), b.reshape(1, 1, 2, 2, 2)


class RegularizerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_disagreement_mask_and_l1_hand_built(self):
    a, b = _reg_volumes()
    # Voxel 0: both confident, 0 vs 1. Voxel 1: B not confident. Voxel 2: agree. Voxel 3:
    # confident at T = .7 (both .75) and disagreeing, not at T = .8.
    mask = self.variant(ds.disagreement_mask)(a, b, 0.7)
    np.testing.assert_array_equal(mask.ravel(), [1, 0, 0, 1])
    np.testing.assert_array_equal(ds.disagreement_mask(a, b, 0.8).ravel(), [1, 0, 0, 0])
    l1 = self.variant(functools.partial(ds.disagreement_l1, normalize='voxels'))
    # |.9 - .15| + |.1 - .85| = 1.5 and .5 + .5 = 1.0 over 4 voxels.
    np.testing.assert_allclose(l1(a, b, mask), 2.5 / 4, rtol=1e-6)
    np.testing.assert_allclose(ds.disagreement_l1(a, b, mask, 'mask'), 2.5 / 2, rtol=1e-6)
    np.testing.assert_allclose(ds.disagreement_l1(a, b, ds.disagreement_mask(a, b, 0.8)), 1.5 / 4,
                               rtol=1e-6)

  def test_gradient_only_on_disagreeing_voxels_and_both_subnets(self):
    a, b = _reg_volumes()
    mask = ds.disagreement_mask(a, b, 0.7)
    grad_a, grad_b = jax.grad(lambda a, b: ds.disagreement_l1(a, b, mask), argnums=(0, 1))(a, b)
    expected = np.zeros((4, 2), np.float32)
    expected[0] = [1, -1]  # sign(a - b) / 4 voxels
    expected[3] = [1, -1]
    np.testing.assert_allclose(grad_a.reshape(4, 2), expected / 4, rtol=1e-6)
    np.testing.assert_allclose(grad_b.reshape(4, 2), -expected / 4, rtol=1e-6)

  def test_empty_mask_is_zero(self):
    a, b = _reg_volumes()
    none = jnp.zeros(a.shape[:-1], bool)
    for normalize in ds.REG_NORMALIZE:
      assert float(ds.disagreement_l1(a, b, none, normalize)) == 0.0


# ------------------------------------------------------------------------------------------------

# Six voxels with 2-D features. Reliable: class 0 at (0, 0), (2, 0) -> c0 = (1, 0); class 1 at
# (0, 2), (0, 4) -> c1 = (0, 3). Unreliable: (1, 1) labeled 0 (d0 = 1, d1 = 5) and (0, 0) labeled
# 1 (d0 = 1, d1 = 9). d(c0, c1) = 10.
_FEATURES = np.array([[0, 0], [2, 0], [0, 2], [0, 4], [1, 1], [0, 0]], np.float32)
_LABELS = np.array([0, 0, 1, 1, 0, 1])
_RELIABLE = np.array([1, 1, 1, 1, 0, 0], bool)


def _proto_inputs(features=_FEATURES, labels=_LABELS, reliable=_RELIABLE):
  return (jnp.asarray(features).reshape(1, 1, 2, 3, -1), jnp.asarray(labels).reshape(1, 1, 2, 3),
          jnp.asarray(reliable).reshape(1, 1, 2, 3))


_contrast = jax.jit(ds.prototype_contrast, static_argnums=3,
                    static_argnames=('distance', 'temperature', 'separation_weight'))


def _softplus(x):
  return np.log1p(np.exp(x))


class PrototypeContrastTest(chex.TestCase):

  def test_prototypes(self):
    protos, present = ds.prototypes(jnp.asarray(_FEATURES), jnp.asarray(_LABELS),
                                    jnp.asarray(_RELIABLE, jnp.float32), 3)
    np.testing.assert_allclose(protos, [[1, 0], [0, 3], [0, 0]], rtol=1e-6)
    np.testing.assert_array_equal(present, [True, True, False])

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed_loss(self):
    fn = self.variant(functools.partial(ds.prototype_contrast, num_classes=2))
    loss, aux = fn(*_proto_inputs())
    # -log softmax(-1, -5)[0] = log(1 + e^-4); -log softmax(-1, -9)[1] = 8 + log(1 + e^-8).
    pull = (_softplus(-4.0) + 8 + _softplus(-8.0)) / 2
    separation = _softplus(-10.0)  # each prototype against the other: log(1 + e^-10)
    np.testing.assert_allclose(aux['pull'], pull, rtol=1e-5)
    # log(1 + 4.5e-5) in float32: absolute, not relative, precision.
    np.testing.assert_allclose(aux['separation'], separation, rtol=0, atol=1e-7)
    np.testing.assert_allclose(loss, pull + separation, rtol=1e-5)
    assert int(aux['num_unreliable']) == 2 and int(aux['num_prototypes']) == 2
    # Temperature 2 halves the distances; a separation weight scales its part.
    loss, aux = _contrast(*_proto_inputs(), 2, temperature=2.0, separation_weight=0.5)
    pull2 = (_softplus(-2.0) + 4 + _softplus(-4.0)) / 2
    np.testing.assert_allclose(loss, pull2 + 0.5 * _softplus(-5.0), rtol=1e-5)
    # Euclidean distances: (1, sqrt 5) and (1, 3); prototypes sqrt(10) apart.
    loss, aux = _contrast(*_proto_inputs(), 2, distance='euclidean')
    pull3 = (_softplus(1 - np.sqrt(5)) + 2 + _softplus(-2.0)) / 2
    np.testing.assert_allclose(aux['pull'], pull3, rtol=1e-5)
    np.testing.assert_allclose(aux['separation'], _softplus(-np.sqrt(10)), rtol=1e-5)

  def test_gradient_pulls_unreliable_voxel_to_its_prototype(self):
    features, labels, reliable = _proto_inputs()
    pull = lambda f: ds.prototype_contrast(f, labels, reliable, 2)[1]['pull']
    grad = jax.jit(jax.grad(pull))(features).reshape(6, 2)
    # Voxel 4 (f = (1, 1), class 0): the logits are -d, so the gradient is
    # sum_k (y_k - p_k) 2 (f - c_k) / 2 voxels = p1 (c1 - c0) = p1 (-1, 3), p1 = softmax(-1, -5)[1]:
    # a descent step moves it along c0 - c1, to its own prototype's side.
    p1 = 1 / (1 + np.exp(4.0))
    np.testing.assert_allclose(grad[4], p1 * np.array([-1.0, 3.0]), rtol=1e-5)
    # The reliable voxels get gradient through the prototypes they form.
    assert np.abs(grad[:4]).sum() > 0
    chex.assert_tree_all_finite(grad)

  def test_separation_pushes_prototypes_apart(self):
    features, labels, reliable = _proto_inputs()
    sep = lambda f: ds.prototype_contrast(f, labels, reliable, 2)[1]['separation']
    grad = jax.jit(jax.grad(sep))(features).reshape(6, 2)
    # Moving class-0 features along c0 - c1 = (1, -3) (away from c1) lowers the separation loss.
    assert np.dot(grad[0], [1, -3]) < 0 and np.dot(grad[2], [-1, 3]) < 0
    np.testing.assert_array_equal(grad[4:], 0.0)  # unreliable voxels form no prototype

  def test_no_nan_on_empty_sets(self):
    cases = {  # labels, reliable, whether two prototypes remain (a separation term)
        'all reliable': (_LABELS, np.ones(6, bool), True),
        'none reliable': (_LABELS, np.zeros(6, bool), False),
        # Only class 0 is reliable: one prototype, nothing to contrast.
        'one class': (np.zeros(6, np.int64), _RELIABLE, False),
        # Class 1 has no reliable voxel: its unreliable voxel is left out, class-0's voxel has a
        # one-class softmax (loss 0), and there is no second prototype.
        'absent class': (np.array([0, 0, 0, 0, 0, 1]), _RELIABLE, False),
    }
    for distance in ds.DISTANCES:
      # One program per distance: the sets are traced inputs.
      fn = jax.jit(jax.value_and_grad(functools.partial(
          ds.prototype_contrast, num_classes=3, distance=distance), has_aux=True))
      for name, (labels, reliable, separated) in cases.items():
        (loss, aux), grad = fn(*_proto_inputs(labels=labels, reliable=reliable))
        chex.assert_tree_all_finite((loss, aux, grad))
        assert float(aux['pull']) == 0.0, (distance, name)
        assert (float(aux['separation']) > 0) == separated, (distance, name)
        np.testing.assert_allclose(loss, aux['separation'], err_msg=f'{distance} {name}')

  def test_unknown_distance_raises(self):
    with pytest.raises(ValueError):
      ds.prototype_contrast(*_proto_inputs(), 2, distance='cosine')


# ------------------------------------------------------------------------------------------------


class ScheduleTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_contrast_weight_at_ends(self):
    fn = self.variant(lambda step, schedule: ds.contrast_weight(step, 6000, 0.1, schedule),
                      static_argnums=1)
    np.testing.assert_allclose(fn(0, 'rampup'), 0.1 * np.exp(-5.0), rtol=1e-6)
    np.testing.assert_allclose(fn(6000, 'rampup'), 0.1, rtol=1e-6)
    np.testing.assert_allclose(fn(3000, 'rampup'), 0.1 * np.exp(-1.25), rtol=1e-6)
    np.testing.assert_allclose(fn(0, 'paper'), 0.1 * np.exp(4.0), rtol=1e-6)
    np.testing.assert_allclose(fn(6000, 'paper'), 0.1, rtol=1e-6)
    np.testing.assert_allclose(fn(9000, 'paper'), 0.1, rtol=1e-6)  # clipped after t_max
    np.testing.assert_allclose(fn(0, 'constant'), 0.1, rtol=1e-6)
    # The code's ramp advances every 150 iterations.
    np.testing.assert_allclose(ds.contrast_weight(149, 6000, 0.1, 'rampup', 150),
                               0.1 * np.exp(-5.0), rtol=1e-6)
    # The ramp-up is schedules.sigmoid_rampup scaled.
    np.testing.assert_allclose(ds.contrast_weight(1234, 6000), 0.1 * schedules.sigmoid_rampup(
        1234, 6000), rtol=1e-6)

  def test_reg_threshold_linear(self):
    np.testing.assert_allclose(
        [ds.reg_threshold(s, 6000, 0.6, 0.9) for s in (0, 3000, 6000, 8000)],
        [0.6, 0.75, 0.9, 0.9], rtol=1e-6)


