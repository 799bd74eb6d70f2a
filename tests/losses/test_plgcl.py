"""PLGCL (eqs. 1-5): patch statistics and sampling against hand-computed values; the closed form
against Monte-Carlo with Gaussian keys (it equals the Jensen bound at lam = 1 and lies above the
expected InfoNCE there), plain InfoNCE and a brute-force reference, and a finite key set on which
it lies below eq. 4 (it is no bound there); invariances, absent classes, no valid anchor;
per-class keys (§3.1)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.losses import plgcl


def _F(x):
  """Eq. 3 in float64, the test's own."""
  x = np.clip(np.asarray(x, np.float64), 1e-6, 1 - 1e-6)
  return -x * np.log(x) - (1 - x) * np.log(1 - x)


def _grid_image(values, patch=2, grid=4):
  """(1, grid*patch, grid*patch) image whose patch j (row-major) holds values[j] (a scalar or a
  flattened patch x patch pattern)."""
  values = np.broadcast_to(np.asarray(values, np.float32).reshape(grid * grid, -1),
                           (grid * grid, patch * patch))
  x = values.reshape(grid, grid, patch, patch).transpose(0, 2, 1, 3)
  return x.reshape(1, grid * patch, grid * patch)


def _two_class_conf(c1_image):
  return jnp.stack([1 - c1_image, c1_image], axis=-1)


# ------------------------------------------------------------------------------------------------


class EntropyAndPatchesTest(chex.TestCase):

  def test_binary_entropy_known_points(self):
    np.testing.assert_allclose(plgcl.binary_entropy(0.5), np.log(2), rtol=1e-6)
    x = np.linspace(0.01, 0.99, 17, dtype=np.float32)
    np.testing.assert_allclose(plgcl.binary_entropy(x), plgcl.binary_entropy(1 - x), rtol=1e-5)
    np.testing.assert_allclose(plgcl.binary_entropy(0.2), _F(0.2), rtol=1e-6)
    ends = plgcl.binary_entropy(jnp.array([0.0, 1.0]))
    chex.assert_tree_all_finite(ends)
    np.testing.assert_allclose(ends, 0.0, atol=1e-4)
    chex.assert_tree_all_finite(jax.grad(lambda x: plgcl.binary_entropy(x).sum())(ends))

  def test_patch_grid_row_major_and_divisibility(self):
    x = np.arange(2 * 4 * 6 * 1, dtype=np.float32).reshape(2, 4, 6, 1)
    tiles = plgcl.patch_grid(x, 2)
    chex.assert_shape(tiles, (2, 6, 2, 2, 1))
    np.testing.assert_array_equal(tiles[1, 4, :, :, 0], x[1, 2:4, 2:4, 0])  # row 1, column 1
    np.testing.assert_array_equal(tiles[0, 2, :, :, 0], x[0, 0:2, 4:6, 0])  # row 0, column 2
    with pytest.raises(ValueError, match='divisible'):
      plgcl.patch_grid(x, 4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_patch_statistics_hand_computed(self):
    image = np.array([[[0.2, 0.4, 1, 1], [0.6, 0.8, 1, 1]]], np.float32)
    c1 = np.array([[[0.5, 0.5, 0, 0], [1, 1, 0.25, 0.25]]], np.float32)
    stats = self.variant(lambda i, c: plgcl.patch_statistics(i, c, 2))(image, _two_class_conf(c1))
    # Patch 0: C1 = (.5, .5, 1, 1), I*C1 = (.1, .2, .6, .8), I*C0 = (.1, .2, 0, 0).
    # Patch 1: C1 = (0, 0, .25, .25), I*C1 = (0, 0, .25, .25), I*C0 = (1, 1, .75, .75).
    np.testing.assert_allclose(stats['avg_BPK'], [[[0.25, 0.75], [0.875, 0.125]]], rtol=1e-6)
    ent = [[(_F(.1) + _F(.2) + 2 * _F(0)) / 4, (_F(.1) + _F(.2) + _F(.6) + _F(.8)) / 4],
           [(2 * _F(1) + 2 * _F(.75)) / 4, (2 * _F(0) + 2 * _F(.25)) / 4]]
    np.testing.assert_allclose(stats['ent_BPK'], [ent], rtol=1e-5)
    np.testing.assert_array_equal(stats['label_BP'], [[1, 0]])
    np.testing.assert_allclose(stats['patches_BPSK'][0, 0, :, 1], [.1, .2, .6, .8], rtol=1e-6)

  def test_assign_options(self):
    avg = np.array([[[0.875, 0.125, 0.0], [0.6, 0.15, 0.25], [0.2, 0.5, 0.3]]], np.float32)
    np.testing.assert_array_equal(plgcl.assign_patch_classes(avg, 'dominant'), [[0, 0, 1]])
    np.testing.assert_array_equal(plgcl.assign_patch_classes(avg, 'foreground'), [[1, 2, 1]])
    np.testing.assert_array_equal(
        plgcl.assign_patch_classes(avg, 'foreground', min_conf=0.2), [[0, 2, 1]])
    with pytest.raises(ValueError):
      plgcl.assign_patch_classes(avg, 'majority')


# ------------------------------------------------------------------------------------------------

# 4x4 grid of constant 2x2 patches. Patches 0-7 are class 1 (C1 > .5), 8-15 class 0. With
# e = F(I * C1) (values in the comments), anchor 0 (e = .6881, C1 = .9) has:
#   entropy, class scope: 7 (.6919), 3 (.6923), 5 (.6730)
#   entropy, all patches: 9 (.6899, a class-0 patch), 7, 3
#   confidence:           6 (.86), 1 (.95), 4 (.99)
_C1 = [0.9, 0.95, 0.7, 0.8, 0.99, 0.6, 0.86, 0.75, 0.1, 0.46, 0.2, 0.3, 0.05, 0.15, 0.25, 0.35]
_I = [0.5, 1, 1, 0.6, 0.3, 1, 1, 0.7, 1, 1, 1, 1, 1, 1, 1, 0.5]
# Cosine: class-1 patches 0-7 hold these patterns (C1 = 1); cosine with anchor 0: 3 (.995),
# 7 (.92), 5 (.894), 1 (.707), 6 (.5). Class-0 patches have C1 = .3; patch 8 has the anchor's
# pattern (cosine 1), the others are orthogonal to it.
_PATTERNS = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, .1, 0, 0], [0, 1, 0, 0], [1, 0, 0, .5],
             [.5, .5, .5, .5], [1, .3, .3, 0], [1, 0, 0, 0]] + [[0, 1, 1, 1]] * 7
_C1_COSINE = [1.0] * 8 + [0.3] * 8


@functools.partial(jax.jit, static_argnames=('sampler', 'scope', 'num_pos', 'anchors'))
def _jit_positives(image, c1, sampler, scope, num_pos=3, anchors=(0,)):
  return _positives(image, c1, sampler, scope, num_pos, anchors)


def _positives(image, c1, sampler, scope, num_pos=3, anchors=(0,)):
  stats = plgcl.patch_statistics(image, _two_class_conf(c1), 2)
  return plgcl.sample_positives(plgcl.grid_keys(stats), jnp.array(anchors), num_pos, sampler,
                                scope)


class SamplerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed_positives(self):
    image, c1 = _grid_image(_I), _grid_image(_C1)
    np.testing.assert_array_equal(plgcl.patch_statistics(image, _two_class_conf(c1), 2)[
        'label_BP'][0], [1] * 8 + [0] * 8)
    cases = [('entropy', 'class', {7, 3, 5}), ('entropy', 'all', {9, 7, 3}),
             ('confidence', 'class', {6, 1, 4}), ('confidence', 'all', {6, 1, 4})]
    for sampler, scope, expected in cases:
      fn = self.variant(functools.partial(_positives, sampler=sampler, scope=scope))
      pos = fn(image, c1)
      assert set(np.asarray(pos['pos_idx_AN'][0]).tolist()) == expected, (sampler, scope)
      assert np.all(pos['pos_valid_AN']), (sampler, scope)
      np.testing.assert_array_equal(pos['anchor_class_A'], [1])

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed_cosine_positives(self):
    image, c1 = _grid_image(_PATTERNS), _grid_image(_C1_COSINE)
    for scope, expected in [('class', {3, 7, 5}), ('all', {8, 3, 7})]:
      pos = self.variant(functools.partial(_positives, sampler='cosine', scope=scope))(image, c1)
      assert set(np.asarray(pos['pos_idx_AN'][0]).tolist()) == expected, scope

  def test_class_scope_stays_in_class_and_pads_invalid_slots(self):
    image, c1 = _grid_image(_I), _grid_image(_C1)
    pos = _jit_positives(image, c1, 'entropy', 'class', num_pos=9, anchors=tuple(range(16)))
    valid, idx = np.asarray(pos['pos_valid_AN']), np.asarray(pos['pos_idx_AN'])
    chex.assert_shape(idx, (16, 9))
    np.testing.assert_array_equal(valid.sum(1), 7)  # 7 other patches per class: 2 slots invalid
    labels = np.array([1] * 8 + [0] * 8)
    for a in range(16):
      got = set(idx[a][valid[a]].tolist())
      assert got == set(np.flatnonzero(labels == labels[a]).tolist()) - {a}
    # More slots than keys keeps the fixed shape.
    pos = _jit_positives(image, c1, 'entropy', 'all', num_pos=20)
    np.testing.assert_array_equal(pos['pos_valid_AN'].sum(), 15)
    chex.assert_shape(pos['pos_idx_AN'], (1, 20))

  def test_anchor_subset_is_fixed_size_and_distinct(self):
    idx = jax.jit(plgcl.select_anchors, static_argnums=(0, 1))(32, 8, jax.random.PRNGKey(0))
    chex.assert_shape(idx, (8,))
    assert len(set(np.asarray(idx).tolist())) == 8
    np.testing.assert_array_equal(plgcl.select_anchors(5), np.arange(5))
    with pytest.raises(ValueError):
      plgcl.select_anchors(32, 8)
    # With eligible keys, a subset takes them first: 5 eligible of 32, 8 drawn.
    eligible = np.zeros(32, bool)
    eligible[[3, 9, 17, 20, 31]] = True
    idx = jax.jit(plgcl.select_anchors, static_argnums=(0, 1))(32, 8, jax.random.PRNGKey(0),
                                                                eligible)
    assert {3, 9, 17, 20, 31} <= set(np.asarray(idx).tolist())


# ------------------------------------------------------------------------------------------------


def _gaussian_problem(seed=0, d=4, k=3):
  rng = np.random.default_rng(seed)
  f = rng.normal(size=d)
  f /= np.linalg.norm(f)
  mu = 0.5 * rng.normal(size=(k, d))
  covs = []
  for _ in range(k):
    a = rng.normal(size=(d, d))
    covs.append(0.03 * a @ a.T + 0.05 * np.eye(d))
  return f, mu, np.stack(covs)


def _closed_form(f, mu, cov, counts, tau, lam=1.0):
  """Anchor of class 0; classes 1.. negatives with zeta = counts (absent when 0)."""
  k = mu.shape[0]
  quad = np.einsum('d,kde,e->k', f, cov, f)
  neg_valid = np.array([[c != 0 and counts[c] > 0 for c in range(k)]])
  log_zeta = np.log(np.maximum(np.asarray(counts, np.float64), 1))
  return _closed_form_jit(f[None], mu[:1], quad[:1], mu, quad[None], log_zeta, neg_valid, None,
                          tau, lam)[0]


_closed_form_jit = jax.jit(plgcl.closed_form_from_moments)


class ClosedFormTest(chex.TestCase):

  def test_equals_monte_carlo_jensen_bound(self):
    # lam = 1 is the exact Gaussian expectation: log E[e^{f.x+/t} + sum_c N_c e^{f.x_c/t}].
    f, mu, cov = _gaussian_problem()
    counts, tau, n = (1, 2, 3), 0.7, 200_000
    rng = np.random.default_rng(1)
    terms = []
    for c in range(3):
      x = rng.multivariate_normal(mu[c], cov[c], n)
      terms.append(counts[c] * np.mean(np.exp(x @ f / tau)))
    mc = np.log(np.sum(terms)) - f @ mu[0] / tau
    got = _closed_form(f, mu, cov, counts, tau)
    np.testing.assert_allclose(got, mc, atol=5e-3)
    # The covariance term matters at this tolerance: without it the result is off.
    assert abs(_closed_form(f, mu, 0 * cov, counts, tau) - mc) > 0.03
    # Same with the library's own Monte-Carlo helper.
    est = _mc(jax.random.PRNGKey(0), f, mu[0], cov[0], mu, cov, counts=(0, 2, 3), tau=tau,
              num_samples=100_000)
    np.testing.assert_allclose(est['jensen_bound'], got, atol=5e-3)

  def test_above_expected_infonce_for_gaussian_keys(self):
    # What holds: in expectation over Gaussian keys, eq. 5 (at lam = 1, and so at lam >= 1) is
    # above E[eq. 4] (Jensen). On one finite set of keys it need not be: see the next test.
    f, mu, cov = _gaussian_problem(seed=3)
    counts, tau, n = (0, 2, 3), 0.7, 100_000
    rng = np.random.default_rng(2)
    x_pos = rng.multivariate_normal(mu[0], cov[0], n)[:, None]
    neg = np.concatenate([rng.multivariate_normal(mu[c], cov[c], (n, counts[c]))
                          for c in (1, 2)], axis=1)
    expected_infonce = jax.jit(plgcl.sampled_infonce)(
        jnp.asarray(np.broadcast_to(f, (n, 4)), jnp.float32), jnp.asarray(x_pos, jnp.float32),
        jnp.asarray(neg, jnp.float32), np.ones((n, 1), bool), np.ones((n, 5), bool), tau)
    bound = _closed_form(f, mu, cov, (1,) + counts[1:], tau)
    assert expected_infonce < bound - 1e-3, (expected_infonce, bound)
    # Larger lam only raises the closed form (the covariance term is >= 0).
    assert _closed_form(f, mu, cov, (1,) + counts[1:], tau, lam=4.0) > bound
    est = _mc(jax.random.PRNGKey(1), f, mu[0], cov[0], mu, cov, counts=counts, tau=tau,
              num_samples=n)
    np.testing.assert_allclose(est['infonce'], expected_infonce, atol=1e-2)
    assert est['infonce'] < est['jensen_bound']

  def test_below_sampled_infonce_on_finite_keys_with_an_outlier(self):
    # Eq. 5 with sample moments is not an upper bound of eq. 4 on a finite set of unit keys:
    # the Gaussian term log N + f.mu/tau + lam/(2 tau^2) f'Sigma f underestimates
    # log sum e^{f.x/tau} when one negative sits far above the rest (a skewed, non-Gaussian
    # set). Anchor e1; one positive at cosine 0.5; 40 negatives, 39 at cosine 0 and one at 1.
    tau, lam = 0.2, 4.0
    f = np.array([[1.0, 0.0, 0.0]], np.float32)
    positive = np.array([[0.5, np.sqrt(0.75), 0.0]], np.float32)
    negatives = np.array([[0.0, 0.0, 1.0]] * 39 + [[1.0, 0.0, 0.0]], np.float32)
    keys = np.concatenate([positive, negatives])
    eq5_fn = jax.jit(lambda keys: plgcl.plgcl_loss(
        f, keys, np.zeros(1, np.int32), np.array([0] + [1] * 40, np.int32),
        np.zeros((1, 1), np.int32), np.ones((1, 1), bool), None, 2, tau=tau, lam=lam)[0])
    eq4_fn = jax.jit(lambda negatives: plgcl.sampled_infonce(
        f, positive[None], negatives[None], np.ones((1, 1), bool), np.ones((1, 40), bool), tau))
    eq5, eq4 = eq5_fn(keys), eq4_fn(negatives)
    # By hand: eq. 4 = log(e^2.5 + 39 + e^5) - 2.5; eq. 5 with mean 1/40, variance 39/1600:
    # log(e^2.5 + 40 e^{0.125 + 50 * 39/1600}) - 2.5.
    np.testing.assert_allclose(eq4, np.log(np.exp(2.5) + 39 + np.exp(5)) - 2.5, rtol=1e-5)
    np.testing.assert_allclose(
        eq5, np.log(np.exp(2.5) + 40 * np.exp(0.125 + 50 * 39 / 1600)) - 2.5, rtol=1e-5)
    assert eq5 < eq4 - 0.1, (eq5, eq4)
    # Without the outlier (all 40 at cosine 0) the same keys give eq. 5 above eq. 4.
    flat = np.array([[0.0, 0.0, 1.0]] * 40, np.float32)
    eq5_flat, eq4_flat = eq5_fn(np.concatenate([positive, flat])), eq4_fn(flat)
    assert eq5_flat >= eq4_flat - 1e-5, (eq5_flat, eq4_flat)

  def test_zero_covariance_one_key_per_class_is_infonce(self):
    rng = np.random.default_rng(0)
    k, d, tau = 4, 6, 0.2
    keys = rng.normal(size=(k, d)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    f = rng.normal(size=(3, d)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    # Key c is the only key of class c; every anchor is of class 0 with key 0 as positive.
    loss_fn = jax.jit(lambda f, x: plgcl.plgcl_loss(
        f, x, jnp.zeros(3, jnp.int32), jnp.arange(k), jnp.zeros((3, 1), jnp.int32),
        jnp.ones((3, 1), bool), None, k, tau=tau, lam=4.0)[0])
    logits = f @ keys.T / tau
    expected = np.mean(-jax.nn.log_softmax(logits, axis=-1)[:, 0])
    np.testing.assert_allclose(loss_fn(f, keys), expected, rtol=1e-5)
    infonce = plgcl.sampled_infonce(f, np.broadcast_to(keys[0], (3, 1, d)),
                                    np.broadcast_to(keys[1:], (3, k - 1, d)),
                                    np.ones((3, 1), bool), np.ones((3, k - 1), bool), tau)
    np.testing.assert_allclose(infonce, expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------


_mc = jax.jit(plgcl.expected_infonce_monte_carlo, static_argnames=('counts', 'num_samples'))


_nearest = jax.jit(plgcl.nearest_positives, static_argnums=(3, 4))


def _random_problem(seed=0, m=14, d=5, k=3, a=5, n=3, scope='all'):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(m, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  cls = rng.integers(0, k, size=m)
  cls[:k] = np.arange(k)  # every class present
  anchor_idx = rng.choice(m, a, replace=False)
  dist = jnp.asarray(rng.random((a, m)), jnp.float32)
  pos_idx, pos_valid = _nearest(dist, jnp.asarray(cls), jnp.asarray(anchor_idx), n, scope)
  pos_valid = np.array(pos_valid)
  pos_valid[-1] = False  # an anchor with no positive: left out of the mean
  return dict(f=x[anchor_idx], x=x, anchor_class=cls[anchor_idx].astype(np.int32),
              cls=cls.astype(np.int32), pos_idx=np.asarray(pos_idx, np.int32), pos_valid=pos_valid)


def _reference_loss(p, k, tau, lam, zeta):
  """Eq. 5 by brute force: explicit sets, explicit biased covariances, float64."""
  f_all, x = p['f'].astype(np.float64), p['x'].astype(np.float64)
  losses = []
  for a, f in enumerate(f_all):
    pos = p['pos_idx'][a][p['pos_valid'][a]]
    if len(pos) == 0:
      continue
    stats = lambda xs: (xs.mean(0), (xs - xs.mean(0)).T @ (xs - xs.mean(0)) / len(xs))
    mu_p, cov_p = stats(x[pos])
    terms = [f @ mu_p / tau + lam / (2 * tau**2) * f @ cov_p @ f]
    for c in range(k):
      members = [j for j in np.flatnonzero(p['cls'] == c) if j not in set(pos.tolist())]
      if c == p['anchor_class'][a] or not members:
        continue
      mu_c, cov_c = stats(x[members])
      z = len(members) if zeta == 'count' else zeta
      terms.append(np.log(z) + f @ mu_c / tau + lam / (2 * tau**2) * f @ cov_c @ f)
    terms = np.array(terms)
    losses.append(np.log(np.sum(np.exp(terms - terms.max()))) + terms.max() - f @ mu_p / tau)
  return np.mean(losses)


def _loss_eager(p, k, tau=plgcl.TAU, lam=plgcl.LAM, zeta='count'):
  return plgcl.plgcl_loss(p['f'], p['x'], p['anchor_class'], p['cls'], p['pos_idx'],
                          p['pos_valid'], None, k, tau=tau, lam=lam, zeta=zeta)


_loss = jax.jit(_loss_eager, static_argnames=('k', 'zeta'))


class LossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_brute_force_reference(self):
    for scope in ('all', 'class'):
      p = _random_problem(scope=scope)
      for zeta in ('count', 2.5):
        fn = self.variant(lambda p, zeta=zeta: _loss_eager(p, 3, tau=0.2, lam=4.0, zeta=zeta))
        loss, aux = fn(p)
        np.testing.assert_allclose(loss, _reference_loss(p, 3, 0.2, 4.0, zeta), rtol=2e-4,
                                   err_msg=f'{scope} {zeta}')
        assert int(aux['num_valid_anchors']) == 4

  def test_invariant_to_key_order_and_class_labels(self):
    p = _random_problem(seed=1)
    base = _loss(p, 3)[0]
    perm = np.random.default_rng(0).permutation(len(p['x']))
    inv = np.argsort(perm)
    q = dict(p, x=p['x'][perm], cls=p['cls'][perm], pos_idx=inv[p['pos_idx']].astype(np.int32))
    np.testing.assert_allclose(_loss(q, 3)[0], base, rtol=1e-5)
    relabel = np.array([2, 0, 1])
    r = dict(p, cls=relabel[p['cls']].astype(np.int32),
             anchor_class=relabel[p['anchor_class']].astype(np.int32))
    np.testing.assert_allclose(_loss(r, 3)[0], base, rtol=1e-5)

  def test_absent_class_gives_finite_loss_and_gradients(self):
    p = _random_problem(seed=2, k=2)  # classes 0, 1 only, out of 4
    loss_fn = lambda f, x: plgcl.plgcl_loss(f, x, p['anchor_class'], p['cls'], p['pos_idx'],
                                            p['pos_valid'], None, 4)[0]
    value, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(p['f'], p['x'])
    chex.assert_tree_all_finite((value, grads))
    assert value > 0
    np.testing.assert_allclose(value, _reference_loss(p, 2, plgcl.TAU, plgcl.LAM, 'count'),
                               rtol=2e-4)

  def test_no_valid_anchor_gives_zero_loss_and_zero_gradients(self):
    p = _random_problem(seed=3)
    loss_fn = lambda f, x, pos_valid, anchor_valid: plgcl.plgcl_loss(
        f, x, p['anchor_class'], p['cls'], p['pos_idx'], pos_valid, anchor_valid, 3)[0]
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    a = len(p['f'])
    for pos_valid, anchor_valid in [(np.zeros_like(p['pos_valid']), np.ones(a, bool)),
                                    (p['pos_valid'], np.zeros(a, bool))]:
      value, grads = value_and_grad(p['f'], p['x'], pos_valid, anchor_valid)
      assert value == 0.0
      chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, grads))

  def test_closed_form_ignores_nan_in_invalid_entries(self):
    f, mu, cov = _gaussian_problem()
    mu_bad = mu.copy()
    mu_bad[2] = np.nan
    quad = np.einsum('d,kde,e->k', f, cov, f)
    quad_bad = quad.copy()
    quad_bad[2] = np.nan
    valid = np.array([[False, True, False]])
    fn = lambda f, m, q: plgcl.closed_form_from_moments(f, m[:1], q[:1], m, q[None], np.zeros(3),
                                                        valid)[0]
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(f[None], jnp.float32),
                                         jnp.asarray(mu_bad, jnp.float32), quad_bad)
    chex.assert_tree_all_finite((value, grad))
    np.testing.assert_allclose(value, fn(f[None], mu, quad), rtol=1e-5)


# ------------------------------------------------------------------------------------------------


def _batch(seed=0, b=2, size=8, k=3, d=6, patch=2):
  # numpy, not jax.random: eager threefry compiles for seconds on a busy CPU.
  rng = np.random.default_rng(seed)
  image = rng.random((b, size, size), np.float32)
  conf = np.array(jax.nn.softmax(3 * rng.normal(size=(b, size, size, k)), -1), np.float32)
  emb = rng.normal(size=(b, (size // patch)**2, d)).astype(np.float32)
  return image, conf, emb / np.linalg.norm(emb, axis=-1, keepdims=True)


class FromPatchesTest(chex.TestCase):
  # Jitted only: the eager path runs the same code, and jit vs eager is compared above.

  def test_finite_gradients_and_batch_order_invariance(self):
    image, conf, emb = _batch()
    for sampler, scope in [('entropy', 'all')]:  # the cosine sampler runs below
      loss_fn = jax.jit(jax.value_and_grad(functools.partial(
          plgcl.plgcl_from_patches, patch=2, num_pos=4, sampler=sampler, entropy_scope=scope),
          argnums=2, has_aux=True))
      (loss, aux), grads = loss_fn(image, conf, emb)
      chex.assert_tree_all_finite((loss, aux, grads))
      assert np.abs(grads).sum() > 0
      assert loss > 0 and int(aux['num_valid_anchors']) > 0
      assert int(aux['class_count_K'].sum()) == 32
      # Swapping the images permutes the keys, which must not change the loss.
      (swapped, _), _ = loss_fn(image[::-1], conf[::-1], emb[::-1])
      np.testing.assert_allclose(swapped, loss, rtol=1e-5, err_msg=f'{sampler} {scope}')

  def test_anchor_subset_and_mask(self):
    image, conf, emb = _batch(seed=1)
    fn = jax.jit(functools.partial(plgcl.plgcl_from_patches, patch=2, num_pos=4, num_anchors=8,
                                   sampler='cosine'))
    rng = jax.random.PRNGKey(0)
    loss, aux = fn(image, conf, emb, rng=rng, anchor_mask_BP=jnp.ones(emb.shape[:2], bool))
    chex.assert_tree_all_finite(loss)
    assert 0 < int(aux['num_valid_anchors']) <= 8
    loss, aux = fn(image, conf, emb, rng=rng, anchor_mask_BP=jnp.zeros(emb.shape[:2], bool))
    assert float(loss) == 0.0 and int(aux['num_valid_anchors']) == 0


# ------------------------------------------------------------------------------------------------
# Per-class keys (§3.1: the patches P^k_{i,j} of every attended image I^k)


def _embed(patch_MS, seed=0, d=6):
  """A fixed embedding of each key's attended patch (stands in for the encoder): permuting keys
  permutes their embeddings, and keys of two classes at one cell differ."""
  w = np.random.default_rng(seed).normal(size=(patch_MS.shape[-1], d)).astype(np.float32)
  e = patch_MS @ w + 1e-3
  return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def _per_class_loss(image, conf, rng, ppc, patch=2, num_pos=3, **kw):
  stats = plgcl.patch_statistics(image, conf, patch, 'per_class', 0.1)
  keys = plgcl.per_class_keys(stats, rng, ppc)
  loss, aux = plgcl.plgcl_from_keys(keys, _embed(keys['patch_MS']), conf.shape[-1],
                                    num_pos=num_pos, **kw)
  return loss, aux, keys


_per_class_loss_jit = jax.jit(_per_class_loss, static_argnames=('ppc', 'patch', 'num_pos'))


def _hand_case():
  """One 4x4 image, four 2x2 cells, K = 3 (one-hot labels, read row-major within a cell):
  cell 0 all class 0; cell 1 half 0, half 1; cell 2 all 2; cell 3 one pixel of 1, three of 2."""
  cells = [[0, 0, 0, 0], [0, 1, 0, 1], [2, 2, 2, 2], [1, 2, 2, 2]]
  label = _grid_image(cells, patch=2, grid=2).astype(np.int32)
  image = _grid_image([[.2, .4, .6, .8], [.1, .3, .5, .7], [.9, .8, .7, .6], [.3, .5, .2, .4]],
                      patch=2, grid=2)
  return image, np.asarray(jax.nn.one_hot(label, 3)), label


class PerClassKeysTest(chex.TestCase):

  def test_hand_computed_keys_and_attended_patches(self):
    image, conf, label = _hand_case()
    stats = plgcl.patch_statistics(image, conf, 2, 'per_class', 0.1)
    assert 'label_BP' not in stats
    keys = plgcl.per_class_keys(stats, None, 3)  # no rng: the first valid cells in grid order
    # Class-major, 3 slots per class; class 0 at cells 0 and 1, class 1 at 1 and 3, class 2 at
    # 2 and 3; the third slot of each class is invalid.
    np.testing.assert_array_equal(keys['class_M'], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(keys['valid_M'], [1, 1, 0] * 3)
    np.testing.assert_array_equal(keys['cell_M'][keys['valid_M']], [0, 1, 1, 3, 2, 3])
    # Key (cell 1, class 1) sees I * C^1: the class-1 pixels of cell 1 (.3 and .7), the rest 0.
    np.testing.assert_allclose(keys['patch_MS'][3], [0, .3, 0, .7], rtol=1e-6)
    np.testing.assert_allclose(keys['patch_MS'][1], [.1, 0, .5, 0], rtol=1e-6)  # (1, class 0)
    np.testing.assert_allclose(keys['ent_MK'][4], stats['ent_BPK'][0, 3], rtol=1e-6)
    np.testing.assert_array_equal(plgcl.key_class_counts(keys, 3), [2, 2, 2])
    # One slot per class: the first valid cell of each.
    one = plgcl.per_class_keys(stats, None, 1)
    np.testing.assert_array_equal(one['cell_M'], [0, 1, 2])

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_case_loss_matches_brute_force(self):
    image, conf, _ = _hand_case()
    loss, aux, keys = self.variant(functools.partial(_per_class_loss, ppc=3, num_pos=1))(
        image, conf, None)
    # Every valid key is an anchor; its one positive is the other key of its class.
    valid = np.flatnonzero(keys['valid_M'])
    emb = np.asarray(_embed(keys['patch_MS']))[valid]
    cls = np.asarray(keys['class_M'])[valid]
    pos = np.array([[j for j in range(len(valid)) if cls[j] == cls[a] and j != a][:1]
                    for a in range(len(valid))])
    p = dict(f=emb, x=emb, anchor_class=cls, cls=cls, pos_idx=pos,
             pos_valid=np.ones(pos.shape, bool))
    np.testing.assert_allclose(loss, _reference_loss(p, 3, plgcl.TAU, plgcl.LAM, 'count'),
                               rtol=2e-4)
    assert int(aux['num_valid_anchors']) == 6

  def test_balanced_draw_of_valid_cells(self):
    image, conf, _ = _batch(seed=4, b=3, size=16, k=4)
    conf[..., 3] = 0.0  # class 3 absent
    conf = conf / conf.sum(-1, keepdims=True)
    stats = plgcl.patch_statistics(image, conf, 2, 'per_class', 0.3)
    present = np.asarray(stats['present_BPK']).reshape(-1, 4)
    ppc = 40
    keys = jax.jit(plgcl.per_class_keys, static_argnums=2)(stats, jax.random.PRNGKey(1), ppc)
    cls, cell, valid = (np.asarray(keys[n]) for n in ('class_M', 'cell_M', 'valid_M'))
    for k in range(4):
      mine = valid & (cls == k)
      assert mine.sum() == min(present[:, k].sum(), ppc), k  # as many as there are, up to ppc
      assert len(set(cell[mine].tolist())) == mine.sum()  # distinct cells
      assert present[cell[mine], k].all()  # every drawn cell holds the class
    assert present[:, :3].sum(0).min() > ppc > 0  # the draw was a real subset for classes 0-2
    # Another rng draws other cells of the same count.
    other = plgcl.per_class_keys(stats, jax.random.PRNGKey(2), ppc)
    assert set(np.asarray(other['cell_M'])[valid].tolist()) != set(cell[valid].tolist())

  def test_invalid_keys_are_never_anchors_positives_or_negatives(self):
    image, conf, _ = _batch(seed=5, b=2, size=8, k=3)
    stats = plgcl.patch_statistics(image, conf, 2, 'per_class', 0.3)
    keys = plgcl.per_class_keys(stats, None, 24)  # 32 cells: some classes leave slots invalid
    valid = np.asarray(keys['valid_M'])
    assert 0 < valid.sum() < len(valid)
    pos = plgcl.sample_positives(keys, jnp.arange(len(valid)), 3)
    assert valid[np.asarray(pos['pos_idx_AN'])[np.asarray(pos['pos_valid_AN'])]].all()
    emb = np.asarray(_embed(keys['patch_MS']))
    fn = jax.jit(jax.value_and_grad(lambda e: plgcl.plgcl_from_keys(keys, e, 3, num_pos=3)[0]))
    value, grad = fn(emb)
    # Replacing the invalid keys' embeddings changes nothing, and they receive no gradient.
    junk = emb.copy()
    junk[~valid] = np.random.default_rng(0).normal(size=junk[~valid].shape)
    value_junk, _ = fn(junk)
    np.testing.assert_allclose(value_junk, value, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad)[~valid], 0.0)
    assert np.abs(np.asarray(grad)[valid]).sum() > 0
    # A subset of anchors is drawn among the valid keys only: all 6 count.
    _, aux = jax.jit(lambda e, r: plgcl.plgcl_from_keys(keys, e, 3, num_pos=3, num_anchors=6,
                                                        rng=r))(emb, jax.random.PRNGKey(0))
    assert int(aux['num_valid_anchors']) == 6

  def test_absent_classes_give_finite_loss_and_gradients(self):
    image, conf, _ = _batch(seed=6, b=2, size=8, k=4)
    conf[..., 2:] = 0.0  # only classes 0 and 1 anywhere
    conf = conf / conf.sum(-1, keepdims=True)

    def loss_fn(image):
      stats = plgcl.patch_statistics(image, conf, 2, 'per_class', 0.1)
      keys = plgcl.per_class_keys(stats, None, 8)
      return plgcl.plgcl_from_keys(keys, _embed(keys['patch_MS']), 4, num_pos=3)
    (value, aux), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(image)
    chex.assert_tree_all_finite((value, grad))
    assert value > 0 and int(aux['num_valid_anchors']) == 16
    np.testing.assert_array_equal(aux['class_count_K'], [8, 8, 0, 0])
    # One class only: no negatives for anyone, loss 0 with a finite gradient.
    conf1 = np.zeros_like(conf)
    conf1[..., 0] = 1.0
    value, grad = jax.jit(jax.value_and_grad(
        lambda i: _per_class_loss(i, conf1, None, ppc=8)[0]))(image)
    chex.assert_tree_all_finite(grad)

  def test_invariant_to_image_order_when_every_valid_key_is_drawn(self):
    image, conf, _ = _batch(seed=7, b=2, size=8, k=3)
    # 32 cells: 32 slots per class draw every valid key, whatever the order of the images.
    loss, aux, _ = _per_class_loss_jit(image, conf, jax.random.PRNGKey(0), ppc=32)
    swapped, _, _ = _per_class_loss_jit(image[::-1], conf[::-1], jax.random.PRNGKey(3), ppc=32)
    assert int(aux['num_valid_anchors']) > 0
    np.testing.assert_allclose(swapped, loss, rtol=1e-5)

  def test_detached_keys_same_value_gradient_through_anchors_only(self):
    image, conf, _ = _batch(seed=8, b=2, size=8, k=3)
    stats = plgcl.patch_statistics(image, conf, 2, 'per_class', 0.1)
    keys = plgcl.per_class_keys(stats, None, 8)
    emb = np.asarray(_embed(keys['patch_MS']))

    def loss(e, detach):
      key_emb = jax.lax.stop_gradient(e) if detach else None
      return plgcl.plgcl_from_keys(keys, e, 3, key_emb_MD=key_emb, num_pos=3)[0]
    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (v_full, g_full), (v_det, g_det) = grad_fn(emb, False), grad_fn(emb, True)
    np.testing.assert_allclose(v_det, v_full, rtol=1e-6)
    chex.assert_tree_all_finite(g_det)
    assert np.abs(g_det).sum() > 0 and not np.allclose(g_det, g_full, atol=1e-6)

  def test_grid_keys_reproduce_the_grid_path(self):
    image, conf, emb = _batch(seed=9)
    loss, _ = jax.jit(functools.partial(plgcl.plgcl_from_patches, patch=2, num_pos=4,
                                        assign='foreground'))(image, conf, emb)
    def via_keys_fn(image, conf, emb):
      keys = plgcl.make_keys(plgcl.patch_statistics(image, conf, 2, 'foreground'), 'foreground')
      return plgcl.plgcl_from_keys(keys, emb.reshape(-1, emb.shape[-1]), 3, num_pos=4)[0]
    via_keys = jax.jit(via_keys_fn)(image, conf, emb)
    np.testing.assert_allclose(via_keys, loss, rtol=1e-5)
    with pytest.raises(ValueError, match='grid keys'):
      plgcl.grid_keys(plgcl.patch_statistics(image, conf, 2, 'per_class'))
    with pytest.raises(ValueError, match='assign'):
      plgcl.plgcl_from_patches(image, conf, emb, patch=2, assign='per_class')


def _balance_script():
  import importlib.util  # noqa: PLC0415
  import os  # noqa: PLC0415
  path = os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks', 'plgcl_balance.py')
  spec = importlib.util.spec_from_file_location('plgcl_balance', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_anchor_balance_on_real_acdc_labels(acdc_dir):
  # The figure: 'dominant' makes 8,496 of the 8,704 patches of the 136 labeled slices
  # (7 patients, 256x256, 32-pixel patches) background; per-class keys give each class its own.
  balance = _balance_script()
  images, labels = balance.read_labeled_slices(acdc_dir, 7, 256, 4)
  assert len(labels) == 136
  counts = {assign: balance.anchor_counts(images, labels, num_classes=4, patch=32, batch=8,
                                          assign=assign, min_conf=0.1, patches_per_class=64)
            for assign in ('dominant', 'per_class')}
  np.testing.assert_array_equal(counts['dominant'].sum(0), [8496, 76, 31, 101])
  per_class = counts['per_class'].sum(0)
  assert np.all(counts['per_class'] <= 64)
  assert per_class[0] / per_class.sum() < 0.55 and np.all(per_class[1:] / per_class.sum() > 0.1)
