"""Supervised pixel contrast (Hu et al. 2021 eq. 2, the SupCon form of their code, LCLPL).

`emb_ND` are L2-normalized pixel embeddings, `labels_N` their (pseudo-)labels. Anchors are the
pixels with `anchor_mask_N` (non-background in the papers); positives of an anchor are the other
pixels of its label, negatives the pixels of every other label, background included. Two views
of a batch are contrasted together by concatenating them into N. `key_mask_N`, where given,
removes pixels altogether (padding slots): they are neither anchors, positives nor negatives.

- `pixel_infonce_dense`: the reference; forms the N x N similarity matrix, which is what runs
  out of memory at full resolution (a 16x256x256 batch would need ~4 TiB in float32).
- `pixel_infonce_tiled`: the same loss and gradient streamed over blocks of anchors and keys with
  an online log-sum-exp (as memory-efficient attention does) and a custom VJP that recomputes the
  blocks; memory linear in N.
- The papers' ways of making it tractable: `stride_select` and `block_contrast` (Hu §2.3),
  `sample_per_class` (random pixels per class), `lclpl_local_contrast` (LCLPL's public code).

Anchors with no positive are masked out, and in the 'hu' form also anchors with no negative: their
every term is log(e^s / e^s) = 0 with zero gradient, so counting them would only pull a mean down
(a block holding one foreground class and no background would enter a block mean as 0). The
'supcon' form keeps them, as SupCon defines it: its denominator runs over every other pixel, so
with positives only the term is still log-sum-exp minus mean, >= log|P(i)|, with a gradient. A
loss is a mean over valid anchors and is 0, with zero gradient, when there is none. Log-sum-exps
subtract their maximum, so large 1/tau cannot overflow.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

FORMS = ('supcon', 'hu')
GROUPS = ('batch', 'image')


def _check_form(form):
  if form not in FORMS:
    raise ValueError(f'unknown form {form!r}; known: {FORMS}')


def _safe_normalize(x, axis=-1):
  # Zero vectors (an absent class's mean) stay zero with a finite gradient instead of 0/0.
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


# ------------------------------------------------------------------------------------------------
# Dense reference
# ------------------------------------------------------------------------------------------------


def _dense_sums(emb_ND, labels_N, anchor_mask_N, tau, form, key_mask_N=None):
  """(sum over valid anchors of the per-anchor loss, number of valid anchors)."""
  n = emb_ND.shape[0]
  logits = emb_ND @ emb_ND.T / tau
  keys = jnp.ones((n,), bool) if key_mask_N is None else key_mask_N
  not_self = ~jnp.eye(n, dtype=bool) & keys[None, :]
  same = (labels_N[:, None] == labels_N[None, :]) & not_self
  num_pos = same.sum(axis=1)
  valid = anchor_mask_N & keys & (num_pos > 0)
  if form == 'supcon':
    log_denominator = jax.nn.logsumexp(jnp.where(not_self, logits, -jnp.inf), axis=1)
    per_pair = logits - log_denominator[:, None]
  else:
    negatives = (labels_N[:, None] != labels_N[None, :]) & keys[None, :]
    valid &= jnp.any(negatives, axis=1)  # no negative: a 0 term, not a contrast (module doc)
    log_negatives = jax.nn.logsumexp(jnp.where(negatives, logits, -jnp.inf), axis=1)
    # log(e^s_ip + e^neg) without overflow; -inf negatives (none) give log e^s_ip.
    per_pair = logits - jnp.logaddexp(logits, log_negatives[:, None])
  per_anchor = -jnp.sum(jnp.where(same, per_pair, 0.0), axis=1) / jnp.maximum(num_pos, 1)
  return jnp.sum(jnp.where(valid, per_anchor, 0.0)), valid.sum()


def pixel_infonce_dense(emb_ND: jax.Array, labels_N: jax.Array, anchor_mask_N: jax.Array,
                        tau: float = 0.1, form: str = 'supcon', *,
                        key_mask_N: Optional[jax.Array] = None) -> jax.Array:
  """Mean over valid anchors of the supervised InfoNCE.

  form='supcon': -1/|P(i)| sum_p [s_ip - logsumexp_{j != i} s_ij] (Khosla et al.; Hu et al.'s code).
  form='hu': -1/|P(i)| sum_p log[exp(s_ip) / (exp(s_ip) + sum_{n in N(i)} exp(s_in))] (Hu eq. 2,
  one term per positive), where s = emb emb^T / tau; anchors without a negative are left out.
  """
  _check_form(form)
  total, count = _dense_sums(emb_ND, labels_N, anchor_mask_N, tau, form, key_mask_N)
  return total / jnp.maximum(count, 1)


# ------------------------------------------------------------------------------------------------
# Exact tiled loss: online log-sum-exp over key blocks, custom VJP that streams them again
# ------------------------------------------------------------------------------------------------
# The pair terms, with s_ij = e_i.e_j / tau, w_i = 1 / #valid anchors (0 if not valid), P(i) the
# positives, N(i) the negatives, O(i) = every key but i:
#   supcon  L_i = lse_{O(i)} s_ij - 1/|P_i| sum_P s_ip;
#           dL/ds_ij = w_i [O_ij softmax_ij - P_ij / |P_i|]
#   hu      L_i = 1/|P_i| sum_P softplus(nu_i - s_ip), nu_i = lse_{N(i)} s_in;
#           dL/ds_ij = w_i/|P_i| [-P_ij sigmoid(nu_i - s_ij) + N_ij e^{s_ij - nu_i} T_i],
#           T_i = sum_P sigmoid(nu_i - s_ip)
# Per-anchor statistics (lse or nu, |P_i|, the positive sum or T_i) are O(N); the gradient
# dL/de = (G + G^T) E / tau is two streamed products: rows (sum over key blocks of G_ak E_k) and
# columns (sum over anchor blocks of G_ak^T E_a), so no N x N array or accumulator exists.


def _blocks(emb_ND, labels_N, anchor_mask_N, key_mask_N, block):
  """Pads N to a multiple of `block`; (emb, labels, index, key mask) as (nb, block, ...) arrays."""
  n, d = emb_ND.shape
  nb = -(-n // block)
  pad = nb * block - n
  emb = jnp.pad(emb_ND, ((0, pad), (0, 0))).reshape(nb, block, d)
  labels = jnp.pad(labels_N, (0, pad)).reshape(nb, block)
  index = jnp.arange(nb * block, dtype=jnp.int32).reshape(nb, block)
  keys = jnp.pad(key_mask_N, (0, pad)).reshape(nb, block)  # padding: False, never a key
  anchors = jnp.pad(anchor_mask_N & key_mask_N, (0, pad)).reshape(nb, block)
  return (emb, labels, index, keys), anchors


def _pairs(a, k, inv_tau):
  """Logits (A, K) of an anchor block and a key block, and the O, P and N masks."""
  emb_a, lab_a, idx_a, _ = a
  emb_k, lab_k, idx_k, key_k = k
  s = (emb_a @ emb_k.T) * inv_tau
  other = key_k[None, :] & (idx_a[:, None] != idx_k[None, :])
  same = other & (lab_a[:, None] == lab_k[None, :])
  neg = key_k[None, :] & (lab_a[:, None] != lab_k[None, :])
  return s, other, same, neg


def _lse_update(m, l, s, mask):
  """One online log-sum-exp step: running max m and sum l of e^{s - m} over masked entries."""
  m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, -jnp.inf), axis=1))
  # While nothing is masked in, m stays -inf; shifting by 0 then keeps every exp finite.
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  p = jnp.exp(jnp.where(mask, s - m_safe[:, None], -jnp.inf))
  return m_new, l * jnp.exp(m - m_safe) + jnp.sum(p, axis=1)


def _lse_finish(m, l):
  return jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(l)  # l = 0 (nothing masked in): -inf


def _over_keys(step, carry, keys):
  return jax.lax.scan(lambda c, k: (step(c, k), None), carry, keys)[0]


def _tiled_stats(blocks, inv_tau, form):
  """Per-anchor statistics, (nb, block) each: supcon (lse, pos_sum, pos_count), hu (nu, softplus
  sum, sigmoid sum T, pos_count)."""
  nb, block, _ = blocks[0].shape
  dtype = blocks[0].dtype
  zeros = jnp.zeros((block,), dtype)
  start = (jnp.full((block,), -jnp.inf, dtype), zeros)

  if form == 'supcon':
    def row(a):
      def step(c, k):
        m, l, pos_sum, pos_count = c
        s, other, same, _ = _pairs(a, k, inv_tau)
        m, l = _lse_update(m, l, s, other)
        # The positive sum comes free from the block already formed for the log-sum-exp.
        return (m, l, pos_sum + jnp.sum(jnp.where(same, s, 0.0), 1),
                pos_count + jnp.sum(same, 1, dtype=jnp.int32))
      m, l, pos_sum, pos_count = _over_keys(
          step, start + (zeros, jnp.zeros((block,), jnp.int32)), blocks)
      return _lse_finish(m, l), pos_sum, pos_count
    return jax.lax.map(row, blocks)

  # hu: the per-positive log(e^{s_ip} + e^{nu_i}) needs nu_i complete, so a second pass.
  def neg_row(a):
    def step(c, k):
      m, l, pos_count = c
      s, _, same, neg = _pairs(a, k, inv_tau)
      m, l = _lse_update(m, l, s, neg)
      return m, l, pos_count + jnp.sum(same, 1, dtype=jnp.int32)
    m, l, pos_count = _over_keys(step, start + (jnp.zeros((block,), jnp.int32),), blocks)
    return _lse_finish(m, l), pos_count
  nu, pos_count = jax.lax.map(neg_row, blocks)

  def pos_row(x):
    a, nu_a = x[:4], x[4]
    def step(c, k):
      sp, sig = c
      s, _, same, _ = _pairs(a, k, inv_tau)
      d = nu_a[:, None] - s  # nu = -inf (no negative): softplus 0, sigmoid 0
      return (sp + jnp.sum(jnp.where(same, jax.nn.softplus(d), 0.0), 1),
              sig + jnp.sum(jnp.where(same, jax.nn.sigmoid(d), 0.0), 1))
    return _over_keys(step, (zeros, zeros), blocks)
  sp, sig = jax.lax.map(pos_row, blocks + (nu,))
  return nu, sp, sig, pos_count


def _tiled_forward(emb_ND, labels_N, anchor_mask_N, key_mask_N, tau, form, block):
  blocks, anchors = _blocks(emb_ND, labels_N, anchor_mask_N, key_mask_N, block)
  stats = _tiled_stats(blocks, 1.0 / tau, form)
  pos_count = stats[-1]
  valid = anchors & (pos_count > 0)
  if form == 'hu':
    valid &= jnp.isfinite(stats[0])  # nu = -inf: no negative, left out as in the dense form
  inv_pos = 1.0 / jnp.maximum(pos_count, 1).astype(emb_ND.dtype)
  if form == 'supcon':
    lse, pos_sum, _ = stats
    per_anchor = lse - pos_sum * inv_pos
  else:
    per_anchor = stats[1] * inv_pos
  num_valid = jnp.maximum(valid.sum(), 1).astype(emb_ND.dtype)
  loss = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / num_valid
  return loss, (blocks, stats, valid, inv_pos, num_valid)


def _grad_block(form, s, other, same, neg, st):
  """dL/ds (A, K) of one block pair from the anchors' statistics."""
  if form == 'supcon':
    c, c_pos, lse = st
    # lse is the log-sum-exp over the same mask, so s - lse <= 0 wherever it is used.
    soft = jnp.exp(jnp.where(other, s - lse[:, None], -jnp.inf))
    return c[:, None] * soft - jnp.where(same, c_pos[:, None], 0.0)
  c_pos, nu, t = st
  sig = jnp.where(same, jax.nn.sigmoid(nu[:, None] - s), 0.0)
  q = jnp.exp(jnp.where(neg, s - nu[:, None], -jnp.inf))
  return c_pos[:, None] * (q * t[:, None] - sig)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _tiled(emb_ND, labels_N, anchor_mask_N, key_mask_N, tau, form, block):
  return _tiled_forward(emb_ND, labels_N, anchor_mask_N, key_mask_N, tau, form, block)[0]


def _tiled_fwd(emb_ND, labels_N, anchor_mask_N, key_mask_N, tau, form, block):
  loss, res = _tiled_forward(emb_ND, labels_N, anchor_mask_N, key_mask_N, tau, form, block)
  return loss, (res, tau, emb_ND.shape[0])


def _tiled_bwd(form, block, saved, g):
  (blocks, stats, valid, inv_pos, num_valid), tau, n = saved
  inv_tau = 1.0 / tau
  c = jnp.where(valid, g / num_valid, 0.0)
  if form == 'supcon':
    st = (c, c * inv_pos, stats[0])
  else:
    nu, _, sig, _ = stats
    st = (c * inv_pos, nu, sig)
  nb, blk, d = blocks[0].shape
  dtype = blocks[0].dtype

  def row(x):  # sum over key blocks of G_ak E_k, and of G_ak * s_ak for d/dtau
    a, st_a = x[:4], x[4:]
    def step(carry, k):
      grad, gs = carry
      s, other, same, neg = _pairs(a, k, inv_tau)
      gmat = _grad_block(form, s, other, same, neg, st_a)
      return grad + gmat @ k[0], gs + jnp.sum(gmat * s, 1)
    return _over_keys(step, (jnp.zeros((blk, d), dtype), jnp.zeros((blk,), dtype)), blocks)
  grad_row, gs = jax.lax.map(row, blocks + st)

  def col(k):  # sum over anchor blocks of G_ak^T E_a
    def step(grad, x):
      a, st_a = x[:4], x[4:]
      s, other, same, neg = _pairs(a, k, inv_tau)
      return grad + _grad_block(form, s, other, same, neg, st_a).T @ a[0]
    return _over_keys(step, jnp.zeros((blk, d), dtype), blocks + st)
  grad_col = jax.lax.map(col, blocks)

  grad_emb = ((grad_row + grad_col) * inv_tau).reshape(nb * blk, d)[:n]
  grad_tau = -jnp.sum(gs) * inv_tau  # ds/dtau = -s / tau
  return grad_emb, None, None, None, grad_tau


_tiled.defvjp(_tiled_fwd, _tiled_bwd)


def pixel_infonce_tiled(emb_ND: jax.Array, labels_N: jax.Array, anchor_mask_N: jax.Array,
                        tau: float = 0.1, form: str = 'supcon', *, block_size: int = 1024,
                        key_mask_N: Optional[jax.Array] = None) -> jax.Array:
  """`pixel_infonce_dense` over all N pixels without an N x N array (same value and gradient).

  Streams blocks of `block_size` anchors against blocks of `block_size` keys (lax.scan; N is
  padded to a multiple, padding masked out). Memory is O(N D + block_size^2); compute is one
  N x N x D product forward ('supcon'; 'hu' needs two, its per-positive term waits for the
  negatives' log-sum-exp) and four backward (the gradient by recomputation, a custom VJP).
  Differentiable in `emb_ND` and `tau`.
  """
  _check_form(form)
  n = emb_ND.shape[0]
  if key_mask_N is None:
    key_mask_N = jnp.ones((n,), bool)
  block = max(1, min(block_size, n))
  tau = jnp.asarray(tau, emb_ND.dtype)
  return _tiled(emb_ND, labels_N, anchor_mask_N.astype(bool), key_mask_N.astype(bool), tau, form,
                block)


# ------------------------------------------------------------------------------------------------
# Hu §2.3: stride and block division; random per-class sampling
# ------------------------------------------------------------------------------------------------


def stride_select(emb_BHWD: jax.Array, labels_BHW: jax.Array, stride: int = 4):
  """Every `stride`-th pixel in both axes (Hu §2.3; their code's `[::s, ::s]`).

  Returns (emb_ND, labels_N); the anchors are the caller's (`labels_N > 0`)."""
  emb = emb_BHWD[:, ::stride, ::stride]
  return emb.reshape(-1, emb.shape[-1]), labels_BHW[:, ::stride, ::stride].reshape(-1)


def _block_groups(x_BHW_, block, views):
  """(G, views * block^2, ...) sets: the same block of `views` images (view-major batch)."""
  b, h, w = x_BHW_.shape[:3]
  rest = x_BHW_.shape[3:]
  nh, nw = h // block, w // block
  x = x_BHW_[:, :nh * block, :nw * block]  # Hu's code drops the remainder, so do we
  x = x.reshape((views, b // views, nh, block, nw, block) + rest)
  # (v, b/v, nh, y, nw, x, ...) -> (b/v, nh, nw, v, y, x, ...): one set per leading triple.
  x = x.transpose((1, 2, 4, 0, 3, 5) + tuple(range(6, x.ndim)))
  return x.reshape((b // views * nh * nw, views * block * block) + rest)


def block_contrast(emb_BHWD: jax.Array, labels_BHW: jax.Array, *, block: int = 16,
                   tau: float = 0.1, form: str = 'supcon', background: int = 0,
                   group: str = 'batch', num_views: int = 1,
                   blocks_per_step: Optional[int] = None) -> jax.Array:
  """Hu §2.3 block division: the loss within each block x block block, averaged over blocks.

  group='batch' (Hu et al.'s code, `BlockConLoss`): one contrast set per block position, holding
  that block of every image in the batch, both views included when the caller stacks them on B.
  group='image': one set per image and block position; with `num_views` = V the batch is V
  view-major stacks ([view 0 images; view 1 images]) and an image's block is contrasted with the
  same block of its other views. Anchors: non-`background` pixels. The mean is over blocks with
  at least one valid anchor (the paper skips all-background blocks; a block whose foreground has
  no positive would be NaN in their code). A remainder smaller than a block is dropped.
  `blocks_per_step`: None contrasts all blocks at once (vmap); a number runs that many at a time
  (lax.map, each step rematerialized in the backward pass), bounding memory at big batches.
  """
  _check_form(form)
  if group not in GROUPS:
    raise ValueError(f'unknown group {group!r}; known: {GROUPS}')
  views = emb_BHWD.shape[0] if group == 'batch' else num_views
  if emb_BHWD.shape[0] % views:
    raise ValueError(f'batch {emb_BHWD.shape[0]} is not a multiple of num_views={views}')
  emb_GMD = _block_groups(emb_BHWD, block, views)
  labels_GM = _block_groups(labels_BHW, block, views)

  def one(x):
    e_MD, l_M = x
    return _dense_sums(e_MD, l_M, l_M != background, tau, form)

  if blocks_per_step is None:
    sums_G, counts_G = jax.vmap(one)((emb_GMD, labels_GM))
  else:
    # Rematerialized: else the backward pass keeps every step's N x N residuals, as vmap would.
    sums_G, counts_G = jax.lax.map(jax.checkpoint(one), (emb_GMD, labels_GM),
                                   batch_size=blocks_per_step)
  has_G = counts_G > 0
  per_block_G = sums_G / jnp.maximum(counts_G, 1)
  return jnp.sum(jnp.where(has_G, per_block_G, 0.0)) / jnp.maximum(has_G.sum(), 1)


def sample_per_class(rng: jax.Array, labels_N: jax.Array, num_per_class: int,
                     num_classes: int):
  """`num_per_class` distinct random pixels of each class: (index_M, valid_M), M = K * num.

  Class-major (slots k * num .. (k+1) * num - 1 hold class k). A class with fewer pixels fills
  its first slots and leaves the rest invalid (index 0); shapes are fixed under jit. Draws
  without replacement by the top `num_per_class` of uniform scores (Gumbel top-k).
  """
  n = labels_N.shape[0]
  u_N = jax.random.uniform(rng, (n,))
  mine_KN = labels_N[None, :] == jnp.arange(num_classes)[:, None]
  score_KN = jnp.where(mine_KN, u_N[None, :], -1.0)  # u in [0, 1): -1 marks other classes
  m = min(num_per_class, n)
  top_KM, index_KM = jax.lax.top_k(score_KN, m)
  valid_KM = top_KM >= 0.0
  if m < num_per_class:
    pad = ((0, 0), (0, num_per_class - m))
    index_KM, valid_KM = jnp.pad(index_KM, pad), jnp.pad(valid_KM, pad)
  index_KM = jnp.where(valid_KM, index_KM, 0)
  return index_KM.reshape(-1), valid_KM.reshape(-1)


# ------------------------------------------------------------------------------------------------
# LCLPL (Chaitanya et al. 2023): the authors' local contrast with class-mean positives
# ------------------------------------------------------------------------------------------------


def lclpl_local_contrast(rng: jax.Array, emb_BHWD: jax.Array, labels_BHW: jax.Array, *,
                         num_classes: int, num_anchors: int = 3, tau: float = 0.1,
                         twin_emb_BHWD: Optional[jax.Array] = None, background: int = 0,
                         require_all_classes: bool = False) -> jax.Array:
  """LCLPL's local contrastive loss as the public code computes it.

  Per image (and its intensity-only twin, same labels): `num_anchors` random pixels of each
  foreground class present, drawn separately in each view. Similarities are cosines / tau to the
  class means of the image (mean embedding of the class, then normalized). For an anchor of class
  c, each view u gives one term -log[e^{s(a, mu_c^u)} / sum_{u', c'} e^{s(a, mu_c'^{u'})}], the
  sum over all views and foreground classes present (the code's denominator includes the
  positive); the anchor's loss is the sum of its terms (one per view), and the loss the mean over
  valid anchors. Background is never an anchor nor a negative.

  Images missing a class: by default the classes present are used, and an anchor needs at least
  one other foreground class present (else it has no negative and is left out).
  `require_all_classes=True` is the code's protocol: only images containing every foreground
  class contribute. The loss is 0 with zero gradient when no anchor is valid.
  """
  b, h, w, d = emb_BHWD.shape
  views = [emb_BHWD] if twin_emb_BHWD is None else [emb_BHWD, twin_emb_BHWD]
  v = len(views)
  labels_BN = labels_BHW.reshape(b, h * w)
  class_A = jnp.repeat(jnp.arange(num_classes), num_anchors)
  sample = functools.partial(sample_per_class, num_per_class=num_anchors,
                             num_classes=num_classes)
  onehot_BNK = jax.nn.one_hot(labels_BN, num_classes, dtype=emb_BHWD.dtype)
  count_BK = onehot_BNK.sum(axis=1)
  fg_K = jnp.arange(num_classes) != background
  present_BK = (count_BK > 0) & fg_K[None, :]

  # Per view (the views are never stacked: a copy of the pixel embeddings would be the largest
  # buffer here): class means, and num_anchors random pixels of each class per image.
  means, anchors, oks = [], [], []
  for emb, key in zip(views, jax.random.split(rng, v)):
    emb_BND = emb.reshape(b, h * w, d)
    mean_BKD = jnp.einsum('bnk,bnd->bkd', onehot_BNK, emb_BND)
    means.append(_safe_normalize(mean_BKD / jnp.maximum(count_BK, 1.0)[..., None]))
    index_BA, ok_BA = jax.vmap(sample)(jax.random.split(key, b), labels_BN)
    anchors.append(_safe_normalize(jnp.take_along_axis(emb_BND, index_BA[..., None], axis=1)))
    oks.append(ok_BA)
  mean_VBKD, anchor_VBAD, ok_VBA = jnp.stack(means), jnp.stack(anchors), jnp.stack(oks)

  logits_VBAUK = jnp.einsum('vbad,ubkd->vbauk', anchor_VBAD, mean_VBKD) / tau
  own_AK = class_A[:, None] == jnp.arange(num_classes)[None, :]
  # The own class is always a candidate, so every log-sum-exp has a finite term (no NaN gradient
  # even for anchors masked out below); for valid anchors it is present anyway.
  cand_BAK = present_BK[:, None, :] | own_AK[None]
  lse_VBA = jax.nn.logsumexp(
      jnp.where(cand_BAK[None, :, :, None, :], logits_VBAUK, -jnp.inf), axis=(3, 4))
  pos_VBAU = jnp.sum(jnp.where(own_AK[None, None, :, None, :], logits_VBAUK, 0.0), axis=-1)
  loss_VBA = jnp.sum(lse_VBA[..., None] - pos_VBAU, axis=-1)

  image_ok_B = present_BK.sum(axis=1) >= (fg_K.sum() if require_all_classes else 2)
  anchor_ok_BA = present_BK[:, class_A] & image_ok_B[:, None]
  valid_VBA = ok_VBA & anchor_ok_BA[None]
  return jnp.sum(jnp.where(valid_VBA, loss_VBA, 0.0)) / jnp.maximum(valid_VBA.sum(), 1)
