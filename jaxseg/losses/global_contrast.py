"""Global (image-level) contrast: SimCLR's NT-Xent, Hu et al. 2021 eq. 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nt_xent(z1_BD: jax.Array, z2_BD: jax.Array, tau: float = 0.5) -> jax.Array:
  """NT-Xent over the 2B embeddings of two views: mean over all 2B anchors.

  For anchor i its positive is the other view of the same image j(i), the denominator every
  embedding but i: L = 1/2B sum_i -log[e^{z_i.z_j(i)/tau} / sum_{k != i} e^{z_i.z_k/tau}]. Eq. 1
  as printed divides the sum by tau outside the exponent; that is a typo (SimCLR, and Hu et al.'s
  code, divide each similarity). Inputs are L2-normalized here (a zero vector stays zero).
  """
  z_ND = jnp.concatenate([z1_BD, z2_BD], axis=0)
  z_ND = z_ND / jnp.sqrt(jnp.maximum(jnp.sum(z_ND * z_ND, axis=-1, keepdims=True), 1e-24))
  b = z1_BD.shape[0]
  n = 2 * b
  logits_NN = z_ND @ z_ND.T / tau
  logits_NN = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits_NN)
  partner_N = jnp.concatenate([jnp.arange(b, n), jnp.arange(b)])
  positive_N = jnp.take_along_axis(logits_NN, partner_N[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits_NN, axis=1) - positive_N)
