"""NT-Xent (Hu et al. eq. 1) against a direct loop, and its invariances."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.losses import global_contrast

nt_xent = jax.jit(global_contrast.nt_xent)


def _loop(z1, z2, tau):
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  b, n = len(z1), 2 * len(z1)
  total = 0.0
  for i in range(n):
    j = (i + b) % n
    den = sum(np.exp(z[i] @ z[k] / tau) for k in range(n) if k != i)
    total += -np.log(np.exp(z[i] @ z[j] / tau) / den)
  return total / n


class NTXentTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loop(self):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))  # not normalized: nt_xent does it
    for tau in (0.5, 0.1):
      got = self.variant(global_contrast.nt_xent)(jnp.asarray(z1, jnp.float32),
                                                  jnp.asarray(z2, jnp.float32), tau)
      np.testing.assert_allclose(got, _loop(z1, z2, tau), rtol=1e-5)

  def test_view_swap_scale_and_batch_order(self):
    rng = np.random.default_rng(1)
    z1, z2 = jnp.asarray(rng.normal(size=(6, 4))), jnp.asarray(rng.normal(size=(6, 4)))
    base = nt_xent(z1, z2)
    perm = rng.permutation(6)
    np.testing.assert_allclose(nt_xent(z2, z1), base, rtol=1e-6)
    np.testing.assert_allclose(nt_xent(3.0 * z1, 0.5 * z2), base, rtol=1e-5)
    np.testing.assert_allclose(nt_xent(z1[perm], z2[perm]), base, rtol=1e-5)

  def test_limits(self):
    # Views identical and the B images mutually orthogonal: positives at 1/tau, the 2B - 2
    # negatives at 0, so L = log(e^{1/tau} + 2B - 2) - 1/tau, which tends to 0 as tau -> 0;
    # as tau -> inf every similarity is 0 and L = log(2B - 1).
    z = jnp.eye(4)
    np.testing.assert_allclose(nt_xent(z, z, 0.5), np.log(np.exp(2.0) + 6) - 2.0, rtol=1e-6)
    np.testing.assert_allclose(nt_xent(z, z, 1e-3), 0.0, atol=1e-6)
    rng = np.random.default_rng(2)
    z1, z2 = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
    np.testing.assert_allclose(nt_xent(z1, z2, 1e6), np.log(7.0), rtol=1e-5)

  def test_zero_embedding_gives_finite_gradient(self):
    z1 = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    z2 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    value, grads = jax.jit(jax.value_and_grad(global_contrast.nt_xent, argnums=(0, 1)))(z1, z2, 0.1)
    chex.assert_tree_all_finite((value, grads))
