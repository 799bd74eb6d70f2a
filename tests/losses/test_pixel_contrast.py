"""Supervised pixel InfoNCE: dense against hand-computed values and limits, the tiled loss against
the dense one (value and gradient), stride / block / sampling against the dense loss on the
selected pixels, LCLPL's local contrast against a hand-computed example."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.losses import pixel_contrast
from jaxseg.losses.pixel_contrast import pixel_infonce_dense, pixel_infonce_tiled

FORMS = ('supcon', 'hu')


def _reference(emb, labels, anchors, tau, form):
  total, count = _reference_sums(emb, labels, anchors, tau, form)
  return total / max(count, 1)


def _reference_sums(emb, labels, anchors, tau, form):
  """(sum of the per-anchor losses, number of valid anchors), numpy loops."""
  s = emb @ emb.T / tau
  total, count = 0.0, 0
  for i in range(len(labels)):
    pos = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
    if not anchors[i] or not pos:
      continue
    neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
    if form == 'hu' and not neg:
      continue  # every term would be log(e^s / e^s) = 0: not a contrast
    terms = []
    for p in pos:
      if form == 'supcon':
        den = sum(np.exp(s[i, j]) for j in range(len(labels)) if j != i)
      else:
        den = np.exp(s[i, p]) + sum(np.exp(s[i, j]) for j in neg)
      terms.append(-np.log(np.exp(s[i, p]) / den))
    total += np.mean(terms)
    count += 1
  return total, count


def _unit(rng, *shape):
  x = rng.normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _separated(labels, dim=4):
  """Each class's pixels share one direction; classes orthogonal (s_in = 0, s_ip = 1/tau)."""
  return jnp.asarray(np.eye(dim, dtype=np.float32)[np.asarray(labels)])


# Two classes, orthogonal: labels [1, 1, 1, 2, 0], pixel 3 (class 2) has no positive. Anchors 0-2
# have |P| = 2 positives at s = 1/tau and |N| = 2 negatives at s = 0. With tau = 0.5 (s = 2):
#   supcon: log(2 e^2 + 2) - 2 = log(2 + 2 e^-2)   hu: log(e^2 + 2) - 2 = log(1 + 2 e^-2)
HAND_LABELS = np.array([1, 1, 1, 2, 0])
HAND_EMB = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
HAND_VALUES = {'supcon': np.log(2 + 2 * np.exp(-2.0)), 'hu': np.log(1 + 2 * np.exp(-2.0))}


def _jit_vg(f):
  return jax.jit(jax.value_and_grad(f))


class DenseTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loop_reference(self):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 1, 1, 2, 2, 2, 0, 1, 3])  # class 3 has no positive
    anchors = labels > 0
    for form in FORMS:
      got = self.variant(pixel_infonce_dense, static_argnames=('form',))(
          jnp.asarray(emb, jnp.float32), labels, anchors, 0.5, form=form)
      np.testing.assert_allclose(got, _reference(emb, labels, anchors, 0.5, form), rtol=1e-5)

  def test_no_valid_anchor_is_zero_with_zero_gradient(self):
    emb = jnp.eye(3)
    labels = jnp.array([0, 1, 2])
    value, grad = _jit_vg(lambda e: pixel_infonce_dense(e, labels, labels > 0))(emb)
    assert value == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(emb))

  def test_small_temperature_stays_finite(self):
    emb = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([1, 1, 2])
    for form in FORMS:
      value, grad = _jit_vg(lambda e: pixel_infonce_dense(e, labels, labels > 0, 1e-3, form))(emb)
      chex.assert_tree_all_finite((value, grad))

  def test_key_mask_equals_dropping_the_pixels(self):
    rng = np.random.default_rng(1)
    emb = jnp.asarray(_unit(rng, 12, 4))
    labels = jnp.asarray(rng.integers(0, 3, 12))
    keep = np.array([True] * 9 + [False] * 3)
    f = jax.jit(pixel_infonce_dense, static_argnames=('form',))
    for form in FORMS:
      masked = f(emb, labels, labels > 0, 0.3, form=form, key_mask_N=keep)
      dropped = f(emb[:9], labels[:9], labels[:9] > 0, 0.3, form=form)
      np.testing.assert_allclose(masked, dropped, rtol=1e-6)


class TiledTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_dense_value_and_gradient(self):
    # 37 pixels in blocks of 8: the last block is padding for all but 5; class 7 has no positive.
    rng = np.random.default_rng(2)
    n = 37
    emb = jnp.asarray(_unit(rng, n, 6))
    labels = rng.integers(0, 4, n)
    labels[5] = 7
    labels = jnp.asarray(labels)
    anchors = labels > 0
    for form in FORMS:
      def dense(e, t, form=form):
        return pixel_infonce_dense(e, labels, anchors, t, form)

      def tiled(e, t, form=form):
        return pixel_infonce_tiled(e, labels, anchors, t, form, block_size=8)

      want = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))(emb, 0.3)
      got = self.variant(jax.value_and_grad(tiled, argnums=(0, 1)))(emb, 0.3)
      chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)
      assert float(jnp.abs(want[1][0]).max()) > 1e-2  # a gradient worth comparing

  def test_matches_dense_with_key_mask_and_one_block(self):
    rng = np.random.default_rng(3)
    emb = jnp.asarray(_unit(rng, 20, 3))
    labels = jnp.asarray(rng.integers(0, 3, 20))
    keep = jnp.asarray(rng.random(20) > 0.3)
    for form in FORMS:
      want = _jit_vg(lambda e: pixel_infonce_dense(e, labels, labels > 0, 0.2, form,
                                                   key_mask_N=keep))(emb)
      for block in (7, 64):  # several blocks; one block larger than N
        f = lambda e: pixel_infonce_tiled(e, labels, labels > 0, 0.2, form, block_size=block,
                                          key_mask_N=keep)
        chex.assert_trees_all_close(_jit_vg(f)(emb), want, rtol=2e-5, atol=2e-6)

  def test_hand_computed_two_orthogonal_classes(self):
    for form in FORMS:
      for fn in (pixel_infonce_dense, pixel_infonce_tiled):
        got = jax.jit(fn, static_argnums=4)(jnp.asarray(HAND_EMB), HAND_LABELS, HAND_LABELS > 0,
                                            0.5, form)
        np.testing.assert_allclose(got, HAND_VALUES[form], rtol=1e-6)

  def test_permutation_of_pixels_leaves_loss_unchanged(self):
    rng = np.random.default_rng(4)
    emb = jnp.asarray(_unit(rng, 29, 5))
    labels = jnp.asarray(rng.integers(0, 3, 29))
    perm = rng.permutation(29)
    for form in FORMS:
      f = _jit_vg(lambda e, l: pixel_infonce_tiled(e, l, l > 0, 0.2, form, block_size=8))
      base, grad = f(emb, labels)
      permuted, grad_p = f(emb[perm], labels[perm])
      np.testing.assert_allclose(permuted, base, rtol=1e-5)
      chex.assert_trees_all_close(grad_p, grad[perm], rtol=1e-4, atol=1e-6)  # grads permute too

  def test_high_temperature_limits(self):
    # tau -> inf: every s_ij -> 0. supcon: lse over the N-1 others of 0 = log(N-1), minus a mean
    # of zeros. hu: each positive gives log(1 + |N(i)| e^0) = log(1 + |N(i)|).
    rng = np.random.default_rng(5)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])  # class 3: no positive, not averaged
    emb = jnp.asarray(_unit(rng, 8, 4))
    valid = [i for i in range(8) if labels[i] > 0 and (labels == labels[i]).sum() > 1]
    want = {'supcon': np.log(7.0),
            'hu': np.mean([np.log(1 + (labels != labels[i]).sum()) for i in valid])}
    for form in FORMS:
      for fn in (pixel_infonce_dense, pixel_infonce_tiled):
        got = jax.jit(fn, static_argnums=4)(emb, labels, labels > 0, 1e5, form)
        np.testing.assert_allclose(got, want[form], rtol=1e-4)

  def test_low_temperature_limit_separated_classes(self):
    # tau -> 0, classes separated (s_ip = 1/tau, s_in = 0): hu -> log(1 + |N| e^{-1/tau}) -> 0.
    # supcon -> log(|P| e^{1/tau} + |N|) - 1/tau -> log|P(i)|, not 0: the positives share the
    # softmax mass, the known floor of the SupCon form.
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    emb = _separated(labels)
    valid = [i for i in range(9) if labels[i] > 0]
    want = {'supcon': np.mean([np.log((labels == labels[i]).sum() - 1) for i in valid]), 'hu': 0.0}
    for form in FORMS:
      for fn in (pixel_infonce_dense, pixel_infonce_tiled):
        value, grad = _jit_vg(lambda e: fn(e, labels, labels > 0, 1e-2, form))(emb)
        np.testing.assert_allclose(value, want[form], atol=5e-5)  # float32 ulp at 1/tau = 100
        chex.assert_tree_all_finite(grad)

  def test_no_valid_anchor_and_small_temperature(self):
    emb = jnp.eye(3)
    labels = jnp.array([0, 1, 2])  # foreground classes without a second pixel
    for form in FORMS:
      value, grad = _jit_vg(lambda e: pixel_infonce_tiled(e, labels, labels > 0, 0.1, form,
                                                          block_size=2))(emb)
      assert value == 0.0
      chex.assert_trees_all_equal(grad, jnp.zeros_like(emb))
    emb = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = jnp.array([1, 1, 2, 1])
    for form in FORMS:
      value, grad = _jit_vg(lambda e: pixel_infonce_tiled(e, labels, labels > 0, 1e-3, form,
                                                          block_size=3))(emb)
      chex.assert_tree_all_finite((value, grad))

  def test_compiled_memory_grows_linearly(self):
    # Dense temp grows as N^2; tiled as N (plus a fixed block^2 term).
    def temp(n, fn):
      f = lambda e, l: fn(e, l, l > 0, 0.1, 'supcon')
      shapes = (jax.ShapeDtypeStruct((n, 8), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32))
      return jax.jit(jax.value_and_grad(f)).lower(*shapes).compile().memory_analysis() \
          .temp_size_in_bytes
    tiled = lambda *a: pixel_infonce_tiled(*a, block_size=128)
    t1, t4 = temp(4096, tiled), temp(16384, tiled)
    assert t4 < 4.5 * t1, (t1, t4)
    assert t4 < 0.05 * temp(16384, pixel_infonce_dense)


class StrideBlockSampleTest(chex.TestCase):

  def _batch(self, seed=6, b=2, h=8, w=8, d=3, classes=3):
    rng = np.random.default_rng(seed)
    emb = _unit(rng, b, h, w, d)
    labels = rng.integers(0, classes, (b, h, w))
    return emb, labels

  def test_stride_equals_dense_on_selected_pixels(self):
    emb, labels = self._batch()
    emb_ND, labels_N = jax.jit(pixel_contrast.stride_select, static_argnums=2)(
        jnp.asarray(emb), jnp.asarray(labels), 4)
    picked = [(b, y, x) for b in range(2) for y in range(0, 8, 4) for x in range(0, 8, 4)]
    np.testing.assert_array_equal(emb_ND, np.stack([emb[p] for p in picked]))
    np.testing.assert_array_equal(labels_N, [labels[p] for p in picked])
    for form in FORMS:
      got = jax.jit(pixel_infonce_dense, static_argnums=4)(emb_ND, labels_N, labels_N > 0, 0.5,
                                                           form)
      e = np.stack([emb[p] for p in picked]).astype(np.float64)
      lab = np.array([labels[p] for p in picked])
      np.testing.assert_allclose(got, _reference(e, lab, lab > 0, 0.5, form), rtol=1e-5)

  def _block_reference(self, emb, labels, block, groups, form, tau=0.5):
    """Mean over groups of (image, y-block, x-block) triples with a valid anchor, numpy loops."""
    losses = []
    h, w = labels.shape[1:]
    for images in groups:
      for by in range(h // block):
        for bx in range(w // block):
          sl = (slice(by * block, (by + 1) * block), slice(bx * block, (bx + 1) * block))
          e = np.concatenate([emb[b][sl].reshape(-1, emb.shape[-1]) for b in images])
          lab = np.concatenate([labels[b][sl].reshape(-1) for b in images])
          total, count = _reference_sums(e.astype(np.float64), lab, lab > 0, tau, form)
          if count:  # a block without a valid anchor is left out
            losses.append(total / count)
    return np.mean(losses)

  def test_block_equals_dense_within_blocks(self):
    emb, labels = self._batch(b=4, h=8, w=10)  # 10 % 4: the last two columns are dropped
    labels[:, :4, :4] = 0  # an all-background block position in every image
    labels[0, 4, 4] = 3  # class 3 once, in one block: no positive there
    for form in FORMS:
      f = jax.jit(pixel_contrast.block_contrast,
                  static_argnames=('block', 'form', 'group', 'num_views', 'blocks_per_step'))
      got = f(jnp.asarray(emb), jnp.asarray(labels), block=4, tau=0.5, form=form)
      want = self._block_reference(emb, labels, 4, [range(4)], form)
      np.testing.assert_allclose(got, want, rtol=1e-5)
      # per image, with views 0..1 stacked view-major: image b pairs with image b + 2
      got = f(jnp.asarray(emb), jnp.asarray(labels), block=4, tau=0.5, form=form, group='image',
              num_views=2)
      want = self._block_reference(emb, labels, 4, [(0, 2), (1, 3)], form)
      np.testing.assert_allclose(got, want, rtol=1e-5)
      chunked = f(jnp.asarray(emb), jnp.asarray(labels), block=4, tau=0.5, form=form,
                  group='image', num_views=2, blocks_per_step=3)
      np.testing.assert_allclose(chunked, got, rtol=1e-6)

  def test_bad_arguments_are_refused(self):
    emb, labels = self._batch(b=3)
    with pytest.raises(ValueError, match='form'):
      pixel_infonce_tiled(jnp.asarray(emb[0, 0]), labels[0, 0], labels[0, 0] > 0, 0.1, 'eq2')
    with pytest.raises(ValueError, match='group'):
      pixel_contrast.block_contrast(jnp.asarray(emb), labels, block=4, group='volume')
    with pytest.raises(ValueError, match='num_views'):
      pixel_contrast.block_contrast(jnp.asarray(emb), labels, block=4, group='image', num_views=2)

  def test_block_all_background_is_zero_and_finite(self):
    emb, _ = self._batch()
    labels = np.zeros((2, 8, 8), int)
    value, grad = _jit_vg(
        lambda e: pixel_contrast.block_contrast(e, jnp.asarray(labels), block=4))(jnp.asarray(emb))
    assert value == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(grad))

  @chex.variants(with_jit=True, without_jit=True)
  def test_sample_per_class(self):
    labels = jnp.asarray(np.array([0] * 10 + [1] * 2 + [2] * 6 + [0] * 4))  # class 3 absent
    sample = self.variant(pixel_contrast.sample_per_class,
                          static_argnames=('num_per_class', 'num_classes'))
    index, valid = sample(jax.random.key(0), labels, num_per_class=4, num_classes=4)
    chex.assert_shape((index, valid), (16,))
    index, valid = np.asarray(index).reshape(4, 4), np.asarray(valid).reshape(4, 4)
    np.testing.assert_array_equal(valid.sum(1), [4, 2, 4, 0])
    for k in range(4):
      got = index[k][valid[k]]
      assert len(set(got.tolist())) == len(got)  # without replacement
      np.testing.assert_array_equal(np.asarray(labels)[got], k)
    other, _ = sample(jax.random.key(1), labels, num_per_class=4, num_classes=4)
    assert not np.array_equal(np.asarray(other).reshape(4, 4)[0], index[0])  # 4 of 14: random


class LCLPLTest(chex.TestCase):

  def _image(self):
    # One 2x3 image: class 1 at two pixels a = e0, b = e1 (mean direction (1, 1, 0) / sqrt 2);
    # class 2 at two pixels, both e2; background at two pixels (never anchor, never negative).
    labels = np.array([[1, 1, 0], [2, 2, 0]])
    emb = np.zeros((2, 3, 4), np.float32)
    emb[0, 0, 0] = emb[0, 1, 1] = 1.0
    emb[1, 0, 2] = emb[1, 1, 2] = 1.0
    emb[:, 2, 3] = 1.0
    return emb, labels

  def test_hand_computed(self):
    emb, labels = self._image()
    tau = 0.5
    c = 1 / np.sqrt(2)
    sp = lambda x: np.log1p(np.exp(x))
    # Class 1 anchors: cos c to their mean, 0 to class 2's: -log(e^{c/t} / (e^{c/t} + 1)).
    # Class 2 anchors: softplus(-1/t). Three anchors asked, two pixels each: all 4 pixels used.
    want = (2 * sp(-c / tau) + 2 * sp(-1 / tau)) / 4
    f = jax.jit(pixel_contrast.lclpl_local_contrast,
                static_argnames=('num_classes', 'num_anchors', 'require_all_classes'))
    got = f(jax.random.key(0), jnp.asarray(emb[None]), jnp.asarray(labels[None]), num_classes=3,
            tau=tau)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Twin identical: the denominator holds each class twice, two positive terms per anchor:
    # 2 (log(2 e^{p} + 2 e^{n}) - p) = 2 (log 2 + softplus(n - p)).
    twin = f(jax.random.key(0), jnp.asarray(emb[None]), jnp.asarray(labels[None]), num_classes=3,
             tau=tau, twin_emb_BHWD=jnp.asarray(emb[None]))
    np.testing.assert_allclose(twin, 2 * (np.log(2) + want), rtol=1e-5)

  def test_missing_class_options_and_no_nan(self):
    emb, labels = self._image()
    # Image 2 has class 1 only (no negative): left out by 'classes present', so the batch gives
    # image 1's loss. require_all_classes (the code's protocol): with num_classes=3 image 1 has
    # every foreground class and counts; with num_classes=4 (class 3 nowhere) none does: 0.
    emb2 = np.stack([emb, np.roll(emb, 1, axis=-1)])
    labels2 = np.stack([labels, np.where(labels == 2, 1, labels)])
    args = (jax.random.key(0), jnp.asarray(emb2), jnp.asarray(labels2))
    f = jax.jit(pixel_contrast.lclpl_local_contrast, static_argnames=('num_classes',))
    one = f(jax.random.key(0), jnp.asarray(emb[None]), jnp.asarray(labels[None]), num_classes=3,
            tau=0.5)
    both = f(*args, num_classes=3, tau=0.5)
    np.testing.assert_allclose(both, one, rtol=1e-6)
    for require_all, classes in ((True, 4), (True, 3)):
      f = lambda e: pixel_contrast.lclpl_local_contrast(
          args[0], e, args[2], num_classes=classes, tau=0.5, twin_emb_BHWD=e,
          require_all_classes=require_all)
      value, grad = _jit_vg(f)(args[1])
      chex.assert_tree_all_finite((value, grad))
      if require_all and classes == 4:  # class 3 is nowhere
        assert value == 0.0
        chex.assert_trees_all_equal(grad, jnp.zeros_like(grad))
      else:
        assert value > 0.0


class HuNoNegativeTest(chex.TestCase):
  """The hu form leaves out anchors with positives but no negative (their term is 0), in every
  mode; supcon keeps them (its term is >= log|P| there). Within one contrast set such anchors
  exist only when the set holds one class, so a set's mean is 0 either way: the exclusion shows
  in the number of valid anchors and in block mode's mean over blocks."""

  # Block 0 (pixels 0-3): classes 1 and 2, two of each. Block 1 (pixels 4-7): class 1 only.
  # With separated classes at tau = 0.5 (s_ip = 2, s_in = 0), each anchor of block 0 has one
  # positive and two negatives: hu = log(1 + 2 e^-2). Block 1's anchors have no negative.
  LABELS = np.array([1, 1, 2, 2, 1, 1, 1, 1])
  WANT_HU = np.log(1 + 2 * np.exp(-2.0))

  def _emb(self):
    return _separated(self.LABELS)

  @chex.variants(with_jit=True)  # eager = jit for both losses is tested above
  def test_dense_and_tiled(self):
    # One class everywhere: no anchor has a negative, so hu has no valid anchor.
    one = jnp.ones(6, jnp.int32)
    emb = _separated(one)
    _, count_hu = pixel_contrast._dense_sums(emb, one, one > 0, 0.5, 'hu')  # noqa: SLF001
    _, count_supcon = pixel_contrast._dense_sums(emb, one, one > 0, 0.5, 'supcon')  # noqa: SLF001
    assert int(count_hu) == 0 and int(count_supcon) == 6
    for fn in (pixel_infonce_dense,
               lambda *a, **k: pixel_infonce_tiled(*a, block_size=4, **k)):
      f = self.variant(jax.value_and_grad(lambda e, fn=fn: fn(e, one, one > 0, 0.5, 'hu')))
      value, grad = f(emb)
      assert value == 0.0
      chex.assert_trees_all_equal(grad, jnp.zeros_like(grad))
      supcon = self.variant(lambda e, fn=fn: fn(e, one, one > 0, 0.5, 'supcon'))(emb)
      np.testing.assert_allclose(supcon, np.log(5.0), rtol=1e-5)  # log|P|: kept, not 0
    # Mixed batch: a class-1 anchor of block 1 does have negatives (class 2 in block 0), so
    # over the whole set every anchor counts; drop class 2 from the keys and none does.
    labels = jnp.asarray(self.LABELS)
    keep = jnp.asarray(self.LABELS != 2)
    for fn in (pixel_infonce_dense,
               lambda *a, **k: pixel_infonce_tiled(*a, block_size=3, **k)):
      got = self.variant(lambda e, fn=fn: fn(e, labels, labels > 0, 0.5, 'hu',
                                             key_mask_N=keep))(self._emb())
      assert got == 0.0

  def test_block_mean_leaves_out_one_class_blocks(self):
    # One image of 2 rows x 4 columns, blocks of 2x2.
    labels = jnp.asarray(self.LABELS.reshape(2, 2, 2).transpose(1, 0, 2).reshape(1, 2, 4))
    emb = _separated(labels)
    # Columns 0-1 hold pixels 0-3 (classes 1 and 2), columns 2-3 pixels 4-7 (class 1 only).
    np.testing.assert_array_equal(labels[0, :, :2].ravel(), [1, 1, 2, 2])
    np.testing.assert_array_equal(labels[0, :, 2:], 1)
    got = jax.jit(pixel_contrast.block_contrast, static_argnames=('block', 'form'))(
        emb, labels, block=2, tau=0.5, form='hu')
    # Before the fix the one-class block entered the mean as 0: WANT_HU / 2.
    np.testing.assert_allclose(got, self.WANT_HU, rtol=1e-5)

  def test_stride_and_sampled_selections(self):
    labels = jnp.asarray(self.LABELS)
    emb = self._emb()
    # Sampled: 2 per class of K = 3; class 2's slots dropped from the keys leave class 1 alone.
    index, valid = pixel_contrast.sample_per_class(jax.random.key(0), labels, 2, 3)
    valid = valid & (labels[index] != 2)
    got = pixel_infonce_dense(emb[index], labels[index], valid & (labels[index] > 0), 0.5, 'hu',
                              key_mask_N=valid)
    assert got == 0.0
    # Stride 2 over a 2 x 4 image of block 1's class only: every kept pixel is class 1.
    emb_ND, labels_N = pixel_contrast.stride_select(
        jnp.broadcast_to(emb[4:][None, None], (1, 2, 4, emb.shape[-1])),
        jnp.ones((1, 2, 4), jnp.int32), 1)
    assert pixel_infonce_tiled(emb_ND, labels_N, labels_N > 0, 0.5, 'hu', block_size=4) == 0.0
