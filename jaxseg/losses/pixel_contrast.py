"""Dense supervised pixel contrast (Hu et al. 2021 eq. 2, and the SupCon form their code uses).

`emb_ND` are L2-normalized pixel embeddings, `labels_N` their (pseudo-)labels. Anchors are the
pixels with `anchor_mask_N` (non-background in the papers); positives of an anchor are the other
pixels of its label, negatives the pixels of every other label, background included.

This is the dense reference: it forms the N x N similarity matrix, which is what runs out of
memory at full resolution (a 16x256x256 batch would need ~4 TiB in float32). Anchors with no
positive are masked out; the loss is a mean over valid anchors and is 0, with zero gradient, when
there is none. Log-sum-exps subtract their maximum, so large 1/tau cannot overflow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FORMS = ('supcon', 'hu')


def pixel_infonce_dense(emb_ND: jax.Array, labels_N: jax.Array, anchor_mask_N: jax.Array,
                        tau: float = 0.1, form: str = 'supcon') -> jax.Array:
  """Mean over valid anchors of the supervised InfoNCE.

  form='supcon': -1/|P(i)| sum_p [s_ip - logsumexp_{j != i} s_ij] (Khosla et al.; Hu et al.'s code).
  form='hu': -1/|P(i)| sum_p log[exp(s_ip) / (exp(s_ip) + sum_{n in N(i)} exp(s_in))] (Hu eq. 2),
  where s = emb emb^T / tau.
  """
  if form not in FORMS:
    raise ValueError(f'unknown form {form!r}; known: {FORMS}')
  n = emb_ND.shape[0]
  logits = emb_ND @ emb_ND.T / tau
  not_self = ~jnp.eye(n, dtype=bool)
  same = (labels_N[:, None] == labels_N[None, :]) & not_self
  num_pos = same.sum(axis=1)
  valid = anchor_mask_N & (num_pos > 0)
  if form == 'supcon':
    log_denominator = jax.nn.logsumexp(jnp.where(not_self, logits, -jnp.inf), axis=1)
    per_pair = logits - log_denominator[:, None]
  else:
    negatives = labels_N[:, None] != labels_N[None, :]
    log_negatives = jax.nn.logsumexp(jnp.where(negatives, logits, -jnp.inf), axis=1)
    # log(e^s_ip + e^neg) without overflow; -inf negatives (none) give log e^s_ip.
    per_pair = logits - jnp.logaddexp(logits, log_negatives[:, None])
  per_anchor = -jnp.sum(jnp.where(same, per_pair, 0.0), axis=1) / jnp.maximum(num_pos, 1)
  return jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(valid.sum(), 1)
