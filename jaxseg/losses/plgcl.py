"""PLGCL (Basak & Yin, CVPR 2023): class-aware patch sampling (§3.1) and the pseudo-label guided
contrastive loss (§3.2, eq. 5).

Pure functions of arrays with fixed shapes under jit: sets of patches are masks or fixed-size index
arrays with a validity mask, never data-dependent shapes. Shapes: B images, P patches per image
(grid cells), M keys, A anchors, N positives per anchor, K classes (0 = background), D embedding
size, S = patch * patch pixels.

Keys. §3.1 attends the image once per class, I^k = I (.) C^k, and cuts each attended image into
patches P^k_{i,j}; a key is one (image, cell, class) triple. `assign='per_class'` (default) keeps
that reading: the key (i, j, k) exists where the cell holds some of class k (Avg^k > min_conf), and
at most `patches_per_class` of them are drawn per class and step, so every class has its own
patches. 'dominant' and 'foreground' give each cell one class and make it one key (M = B * P); on
ACDC labels 98% of those are background (BUILD_NOTES.md). A key set is a dict of flat arrays
(`grid_keys`, `per_class_keys`).

Pipeline: `patch_statistics` (eqs. 1-3) -> `make_keys` -> `select_anchors` and
`sample_positives` (n nearest keys) -> `plgcl_loss` (eq. 5 through `closed_form_from_moments`);
`plgcl_from_keys` composes the last three for embeddings of the keys, `plgcl_from_patches` all of
them for embeddings of the grid cells (grid assignments).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

# Paper values (§4): temperature, weight of the covariance term, positives per anchor.
TAU = 0.2
LAM = 4.0
NUM_POS = 20
# A patch holds class k when its mean confidence Avg^k exceeds this: 'per_class' keys exist only
# there; in 'foreground' a patch whose best foreground class is below it is background. On one-hot
# labels it is a pixel fraction (>= 103 of 1,024 pixels at 32x32).
MIN_CONF = 0.1
# 'per_class': keys drawn per class and step (see `per_class_keys`).
PATCHES_PER_CLASS = 64

ASSIGNS = ('per_class', 'dominant', 'foreground')
GRID_ASSIGNS = ('dominant', 'foreground')
SAMPLERS = ('entropy', 'confidence', 'cosine')
SCOPES = ('class', 'all')


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'{name} must be one of {allowed}, got {value!r}')


# ------------------------------------------------------------------------------------------------
# §3.1: patch statistics
# ------------------------------------------------------------------------------------------------


def binary_entropy(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Eq. 3: F(x) = -x log x - (1-x) log(1-x), x clipped to [eps, 1-eps] so F(0), F(1) ~ 0."""
  x = jnp.clip(x, eps, 1.0 - eps)
  return -x * jnp.log(x) - (1.0 - x) * jnp.log1p(-x)


def patch_grid(x_BHWC: jax.Array, patch: int) -> jax.Array:
  """Non-overlapping patch x patch tiles, (B, P, patch, patch, C), grid cells in row-major order."""
  b, h, w, c = x_BHWC.shape
  if h % patch or w % patch:
    raise ValueError(f'image size {h}x{w} is not divisible by patch size {patch}')
  gh, gw = h // patch, w // patch
  x = x_BHWC.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, patch, patch, c)


def assign_patch_classes(avg_BPK: jax.Array, assign: str = 'dominant',
                         min_conf: float = MIN_CONF) -> jax.Array:
  """The class of each patch from its mean confidences (eq. 1); the paper does not say how.

  'dominant': argmax over all classes, background included (the class with most confidence mass).
  'foreground': the best foreground class if its mean confidence exceeds `min_conf`, else 0, so a
  patch holding a small structure is not swallowed by the background around it.
  ('per_class' gives a cell a key per class it holds, not one class: see `per_class_keys`.)
  """
  _check('assign', assign, GRID_ASSIGNS)
  if assign == 'dominant':
    return jnp.argmax(avg_BPK, axis=-1)
  fg_BPK = avg_BPK[..., 1:]
  best_BP = jnp.argmax(fg_BPK, axis=-1) + 1
  return jnp.where(jnp.max(fg_BPK, axis=-1) > min_conf, best_BP, 0)


def patch_statistics(image_BHW: jax.Array, conf_BHWK: jax.Array, patch: int,
                     assign: str = 'dominant', min_conf: float = MIN_CONF) -> dict:
  """Eqs. 1-3 per patch and class, and the patch's class.

  `conf_BHWK` is the student's softmax (unlabeled) or the ground-truth one-hot (labeled); the
  image should be in [0, 1] (eq. 3 is an entropy of intensities). A trailing channel of 1 is
  accepted. Returns avg_BPK (eq. 1), ent_BPK (eq. 2: mean of F(I * C^k)), patches_BPSK (the
  attended patches I * C^k, flattened), present_BPK (Avg^k > min_conf: the cell holds class k) and,
  for the grid assignments, label_BP (the cell's one class).
  """
  image_BHW, conf_BHWK = jnp.asarray(image_BHW), jnp.asarray(conf_BHWK)
  if image_BHW.ndim == 4:
    image_BHW = image_BHW[..., 0]
  attended_BHWK = image_BHW[..., None] * conf_BHWK  # I^k = I (.) C^k
  avg_BPK = patch_grid(conf_BHWK, patch).mean(axis=(2, 3))
  att_BPppK = patch_grid(attended_BHWK, patch)
  ent_BPK = binary_entropy(att_BPppK).mean(axis=(2, 3))
  b, p, _, _, k = att_BPppK.shape
  stats = dict(avg_BPK=avg_BPK, ent_BPK=ent_BPK, present_BPK=avg_BPK > min_conf,
               patches_BPSK=att_BPppK.reshape(b, p, patch * patch, k))
  _check('assign', assign, ASSIGNS)
  if assign in GRID_ASSIGNS:
    stats['label_BP'] = assign_patch_classes(avg_BPK, assign, min_conf)
  return stats


# ------------------------------------------------------------------------------------------------
# §3.1: keys
# ------------------------------------------------------------------------------------------------
# A key set is a dict of flat arrays over M keys: cell_M (index into the B * P grid cells),
# class_M, valid_M, the cell's eq. 1 and 2 values in every class (avg_MK, ent_MK: a sampler
# measures a key in the anchor's class), patches_MSK (the cell's attended patches, cosine sampler)
# and patch_MS (the key's own attended patch I * C^class, what is embedded).


def _gather_keys(stats: dict, cell_M: jax.Array, class_M: jax.Array, valid_M: jax.Array) -> dict:
  b, p, s, k = stats['patches_BPSK'].shape
  flat = lambda x: x.reshape((b * p,) + x.shape[2:])[cell_M]
  patches_MSK = flat(stats['patches_BPSK'])
  patch_MS = jnp.take_along_axis(patches_MSK, class_M[:, None, None], axis=-1)[..., 0]
  return dict(cell_M=cell_M, class_M=class_M, valid_M=valid_M, avg_MK=flat(stats['avg_BPK']),
              ent_MK=flat(stats['ent_BPK']), patches_MSK=patches_MSK, patch_MS=patch_MS)


def grid_keys(stats: dict) -> dict:
  """One key per grid cell, of the cell's one class (`label_BP`: 'dominant' or 'foreground')."""
  if 'label_BP' not in stats:
    raise ValueError("grid keys need a cell class: patch_statistics with assign 'dominant' or "
                     "'foreground'")
  label_M = stats['label_BP'].reshape(-1)
  return _gather_keys(stats, jnp.arange(label_M.shape[0]), label_M,
                      jnp.ones(label_M.shape, bool))


def per_class_keys(stats: dict, rng: Optional[jax.Array],
                   patches_per_class: int = PATCHES_PER_CLASS) -> dict:
  """§3.1's patches P^k_{i,j}: keys (cell, class k) where the cell holds class k, at most
  `patches_per_class` per class, drawn uniformly among the valid ones.

  M = K * patches_per_class, class-major (slots k * Q .. (k+1) * Q - 1 are class k); a class with
  fewer valid cells fills its first slots and leaves the rest invalid (cell 0). Drawn without
  replacement as the top Q of uniform scores (Gumbel top-k) with `rng`; without `rng` the first
  valid cells in grid order are taken (deterministic, for tests and measurements).
  """
  present_BPK = stats['present_BPK']
  b, p, k = present_BPK.shape
  present_KC = present_BPK.reshape(b * p, k).T
  if rng is None:
    u_C = 1.0 - jnp.arange(b * p, dtype=jnp.float32) / (b * p)  # first cells first
  else:
    u_C = jax.random.uniform(rng, (b * p,))
  score_KC = jnp.where(present_KC, u_C[None, :], -1.0)  # u in [0, 1]; -1 marks absent
  q = min(patches_per_class, b * p)
  top_KQ, cell_KQ = jax.lax.top_k(score_KC, q)
  valid_KQ = top_KQ >= 0.0
  if q < patches_per_class:  # fixed shape whatever the number of cells
    pad = ((0, 0), (0, patches_per_class - q))
    cell_KQ, valid_KQ = jnp.pad(cell_KQ, pad), jnp.pad(valid_KQ, pad)
  cell_KQ = jnp.where(valid_KQ, cell_KQ, 0)
  class_KQ = jnp.broadcast_to(jnp.arange(k)[:, None], cell_KQ.shape)
  return _gather_keys(stats, cell_KQ.reshape(-1), class_KQ.reshape(-1), valid_KQ.reshape(-1))


def make_keys(stats: dict, assign: str, rng: Optional[jax.Array] = None,
              patches_per_class: int = PATCHES_PER_CLASS) -> dict:
  """The key set of `assign` ('per_class', or a grid assignment `patch_statistics` applied)."""
  _check('assign', assign, ASSIGNS)
  if assign == 'per_class':
    return per_class_keys(stats, rng, patches_per_class)
  return grid_keys(stats)


def key_class_counts(keys: dict, num_classes: int) -> jax.Array:
  """(K,) valid keys per class: with every key an anchor, the anchors' class balance."""
  return jnp.bincount(jnp.where(keys['valid_M'], keys['class_M'], num_classes),
                      length=num_classes + 1)[:num_classes]


# ------------------------------------------------------------------------------------------------
# §3.1: anchors and positives
# ------------------------------------------------------------------------------------------------


def select_anchors(num_keys: int, num_anchors: Optional[int] = None,
                   rng: Optional[jax.Array] = None,
                   eligible_M: Optional[jax.Array] = None) -> jax.Array:
  """Anchor indices into the M keys: all, or `num_anchors` distinct ones drawn with `rng`.

  With `eligible_M`, the draw takes eligible keys first (top-k of uniform scores, the ineligible
  ones below every eligible one), so a subset is not spent on invalid or masked keys; the caller
  still masks the anchors it returns."""
  if num_anchors is None or num_anchors >= num_keys:
    return jnp.arange(num_keys)
  if rng is None:
    raise ValueError('a PRNG key is needed to draw a subset of anchors')
  if eligible_M is None:
    return jax.random.choice(rng, num_keys, (num_anchors,), replace=False)
  score_M = jnp.where(eligible_M, jax.random.uniform(rng, (num_keys,)), -1.0)
  return jax.lax.top_k(score_M, num_anchors)[1]


def sampling_distance(sampler: str, anchor_idx_A: jax.Array, anchor_class_A: jax.Array,
                      ent_MK: Optional[jax.Array] = None, avg_MK: Optional[jax.Array] = None,
                      patches_MSK: Optional[jax.Array] = None) -> jax.Array:
  """Distance (A, M) from each anchor to each key, measured in the anchor's class k.

  'entropy' (paper): |Ent^k_key - Ent^k_anchor|; 'confidence' (Table 3): the same with Avg^k;
  'cosine' (Table 3): minus the cosine similarity of the flattened attended patches I * C^k.
  """
  _check('sampler', sampler, SAMPLERS)
  if sampler in ('entropy', 'confidence'):
    score_MK = ent_MK if sampler == 'entropy' else avg_MK
    key_AM = score_MK[:, anchor_class_A].T
    anchor_A = score_MK[anchor_idx_A, anchor_class_A]
    return jnp.abs(key_AM - anchor_A[:, None])
  norm_M1K = jnp.sqrt(jnp.sum(patches_MSK**2, axis=1, keepdims=True))
  # An all-zero patch (class absent, black image) has no direction: similarity 0, not NaN.
  unit_MSK = patches_MSK / jnp.where(norm_M1K > 0, norm_M1K, 1.0)
  anchor_AS = unit_MSK[anchor_idx_A, :, anchor_class_A]
  # Selecting class k on the anchor side keeps the result A x M instead of A x M x K.
  onehot_AK = jax.nn.one_hot(anchor_class_A, patches_MSK.shape[-1], dtype=unit_MSK.dtype)
  return -jnp.einsum('as,ak,msk->am', anchor_AS, onehot_AK, unit_MSK)


def nearest_positives(dist_AM: jax.Array, key_class_M: jax.Array, anchor_idx_A: jax.Array,
                      num_pos: int = NUM_POS, entropy_scope: str = 'class',
                      key_valid_M: Optional[jax.Array] = None):
  """The `num_pos` keys nearest to each anchor: (pos_idx_AN, pos_valid_AN).

  Candidates never include the anchor itself. entropy_scope 'class': only keys of the anchor's
  class; 'all': every key (the literal reading of §3.1, so a positive may be of another class).
  Fewer than `num_pos` candidates leave the last slots invalid. Ties go to the lower index.
  """
  _check('entropy_scope', entropy_scope, SCOPES)
  a, m = dist_AM.shape
  cand_AM = jnp.arange(m)[None, :] != anchor_idx_A[:, None]
  if key_valid_M is not None:
    cand_AM &= key_valid_M[None, :]
  if entropy_scope == 'class':
    cand_AM &= key_class_M[None, :] == key_class_M[anchor_idx_A][:, None]
  score_AM = jnp.where(cand_AM, -dist_AM, -jnp.inf)
  k = min(num_pos, m)
  top_AN, pos_idx_AN = jax.lax.top_k(score_AM, k)
  pos_valid_AN = top_AN > -jnp.inf
  if k < num_pos:  # fixed shape whatever the number of keys
    pos_idx_AN = jnp.pad(pos_idx_AN, ((0, 0), (0, num_pos - k)))
    pos_valid_AN = jnp.pad(pos_valid_AN, ((0, 0), (0, num_pos - k)))
  return pos_idx_AN, pos_valid_AN


def sample_positives(keys: dict, anchor_idx_A: jax.Array, num_pos: int = NUM_POS,
                     sampler: str = 'entropy', entropy_scope: str = 'class') -> dict:
  """Positives for anchors indexing the keys of a key set (`make_keys`).

  Returns anchor_class_A and pos_idx_AN (indices into the M keys), pos_valid_AN. Invalid keys are
  never positives. Negatives are implicit: the valid keys of every other class (`plgcl_loss`).
  """
  anchor_class_A = keys['class_M'][anchor_idx_A]
  dist_AM = sampling_distance(sampler, anchor_idx_A, anchor_class_A, keys['ent_MK'],
                              keys['avg_MK'], keys['patches_MSK'])
  pos_idx_AN, pos_valid_AN = nearest_positives(dist_AM, keys['class_M'], anchor_idx_A, num_pos,
                                               entropy_scope, keys['valid_M'])
  return dict(anchor_class_A=anchor_class_A, pos_idx_AN=pos_idx_AN, pos_valid_AN=pos_valid_AN)


# ------------------------------------------------------------------------------------------------
# §3.2: the loss
# ------------------------------------------------------------------------------------------------


def closed_form_from_moments(f_AD: jax.Array, mu_pos_AD: jax.Array, quad_pos_A: jax.Array,
                             mu_neg_KD: jax.Array, quad_neg_AK: jax.Array, log_zeta_K: jax.Array,
                             neg_valid_AK: jax.Array, anchor_valid_A: Optional[jax.Array] = None,
                             tau: float = TAU, lam: float = LAM) -> jax.Array:
  """Eq. 5 per anchor from the moments: (A,), 0 for invalid anchors.

  L = logsumexp[f.mu+/tau + lam/(2 tau^2) q+, log zeta_c + f.mu_c/tau + lam/(2 tau^2) q_c
  for valid c] - f.mu+/tau, with q = f^T Sigma f. mu_neg is (K, D) or per anchor (A, K, D);
  log_zeta broadcasts to (A, K). With lam = 1 it is the exact log E[...] of the Jensen bound for
  Gaussian keys, so in expectation over Gaussian keys it is above eq. 4. On a finite set of keys
  with sample moments it is no bound: a negative far above the rest makes it smaller than eq. 4
  on the same keys (tests/test_plgcl.py). Invalid entries may hold anything (NaN included): they
  are replaced by safe values before use, so no NaN reaches the value or the gradient.
  """
  a, k = quad_neg_AK.shape
  neg_valid_AK = jnp.broadcast_to(neg_valid_AK, (a, k))
  if anchor_valid_A is None:
    anchor_valid_A = jnp.ones((a,), bool)
  mu_pos_AD = jnp.where(anchor_valid_A[:, None], mu_pos_AD, 0.0)
  quad_pos_A = jnp.where(anchor_valid_A, quad_pos_A, 0.0)
  if mu_neg_KD.ndim == 2:
    sim_neg_AK = f_AD @ jnp.nan_to_num(mu_neg_KD).T
  else:
    sim_neg_AK = jnp.einsum('ad,akd->ak', f_AD, jnp.where(neg_valid_AK[..., None], mu_neg_KD, 0.))
  sim_neg_AK = jnp.where(neg_valid_AK, sim_neg_AK, 0.0)
  quad_neg_AK = jnp.where(neg_valid_AK, quad_neg_AK, 0.0)
  log_zeta_AK = jnp.where(neg_valid_AK, jnp.broadcast_to(log_zeta_K, (a, k)), 0.0)

  scale = lam / (2.0 * tau**2)
  pos_logit_A = jnp.sum(f_AD * mu_pos_AD, axis=-1) / tau
  pos_term_A1 = (pos_logit_A + scale * quad_pos_A)[:, None]
  neg_term_AK = log_zeta_AK + sim_neg_AK / tau + scale * quad_neg_AK
  # Absent classes at -inf add exp(-inf) = 0 to the sum and get a zero gradient.
  terms = jnp.concatenate([pos_term_A1, jnp.where(neg_valid_AK, neg_term_AK, -jnp.inf)], axis=1)
  loss_A = jax.nn.logsumexp(terms, axis=1) - pos_logit_A
  return jnp.where(anchor_valid_A, loss_A, 0.0)


def plgcl_loss(anchor_emb_AD: jax.Array, key_emb_MD: jax.Array, anchor_class_A: jax.Array,
               key_class_M: jax.Array, pos_idx_AN: jax.Array, pos_valid_AN: jax.Array,
               anchor_valid_A: Optional[jax.Array], num_classes: int, tau: float = TAU,
               lam: float = LAM, zeta: Union[str, float] = 'count',
               key_valid_M: Optional[jax.Array] = None):
  """Eq. 5 averaged over valid anchors: (loss, aux).

  Positives of anchor a: its valid `pos_idx_AN` keys; mu+ and Sigma+ are their mean and biased
  covariance (as the authors' code). Negatives of class c != k (the anchor's class): the valid
  keys of class c minus the anchor's positives (which only differ with entropy_scope 'all').
  zeta='count' sets zeta_c = number of those negatives (the sum over v in the derivation); a
  float is a fixed scale (the authors' code: psi / K, psi = 4096 in warm-up).

  Quadratic forms are never n x n: for positives, f^T Sigma+ f is the biased variance of the
  projections f.x over the gathered (A, N, D) keys. For negatives we keep per-class statistics,
  mean (K, D) and centred covariance (K, D, D), and evaluate f^T Sigma_c f row-wise
  ('ad,kde,ae->ak'); the anchor's positives are then removed from each class exactly, with their
  projections. Memory is O(K D^2 + A N D), independent of the number of keys, so keys can be a
  long queue (the authors keep 4096 per class), where the alternative, the A x M projections, is
  not. Anchors without a valid positive (or masked by `anchor_valid_A`) are left out of the mean;
  with no valid anchor the loss is 0 with a zero gradient.
  """
  if isinstance(zeta, str) and zeta != 'count':
    raise ValueError(f"zeta must be 'count' or a number, got {zeta!r}")
  dtype = anchor_emb_AD.dtype
  if key_valid_M is None:
    key_valid_M = jnp.ones(key_class_M.shape, bool)
  f_AD = anchor_emb_AD

  # Positives: masked mean and biased variance of the projections.
  pos_valid_AN = pos_valid_AN & key_valid_M[pos_idx_AN]
  x_pos_AND = key_emb_MD[pos_idx_AN]
  s_AN = jnp.einsum('ad,and->an', f_AD, x_pos_AND)
  n_pos_A = jnp.sum(pos_valid_AN, axis=-1)
  w_AN = pos_valid_AN / jnp.maximum(n_pos_A, 1)[:, None].astype(dtype)
  mu_pos_AD = jnp.einsum('an,and->ad', w_AN, x_pos_AND)
  sim_pos_A = jnp.sum(w_AN * s_AN, axis=-1)
  quad_pos_A = jnp.sum(w_AN * (s_AN - sim_pos_A[:, None])**2, axis=-1)

  # Class statistics of all valid keys; each key centred on its own class mean for accuracy.
  onehot_MK = jax.nn.one_hot(key_class_M, num_classes, dtype=dtype) * key_valid_M[:, None]
  count_K = jnp.sum(onehot_MK, axis=0)
  safe_count_K = jnp.maximum(count_K, 1.0)
  mu_KD = (onehot_MK.T @ key_emb_MD) / safe_count_K[:, None]
  xc_MD = key_emb_MD - mu_KD[key_class_M]
  cov_KDD = jnp.einsum('mk,md,me->kde', onehot_MK, xc_MD, xc_MD) / safe_count_K[:, None, None]
  m_AK = f_AD @ mu_KD.T
  v_AK = jnp.einsum('ad,kde,ae->ak', f_AD, cov_KDD, f_AD)

  # Remove the anchor's positives from their classes (only 'all' scope has any there). With
  # dev = f.x - f.mu_c for each positive of class c, the rest R of the class has projected mean
  # f.mu_c - sum(dev)/N_R and variance (N_c v_c - sum(dev^2)) / N_R - (sum(dev)/N_R)^2; working
  # with deviations from f.mu_c avoids the cancellation of E[s^2] - E[s]^2.
  pos_oh_ANK = jax.nn.one_hot(key_class_M[pos_idx_AN], num_classes, dtype=dtype)
  pos_oh_ANK *= pos_valid_AN[..., None]
  dev_AN = s_AN - jnp.einsum('ank,ak->an', pos_oh_ANK, m_AK)
  n_neg_AK = count_K[None, :] - jnp.sum(pos_oh_ANK, axis=1)
  safe_n_AK = jnp.maximum(n_neg_AK, 1.0)
  shift_AK = jnp.einsum('ank,an->ak', pos_oh_ANK, dev_AN) / safe_n_AK
  sq_AK = jnp.einsum('ank,an->ak', pos_oh_ANK, dev_AN**2)
  quad_neg_AK = jnp.maximum((count_K * v_AK - sq_AK) / safe_n_AK - shift_AK**2, 0.0)
  mu_neg_AKD = (count_K[:, None] * mu_KD - jnp.einsum('ank,and->akd', pos_oh_ANK, x_pos_AND))
  mu_neg_AKD /= safe_n_AK[..., None]
  neg_valid_AK = (n_neg_AK > 0.5) & (jnp.arange(num_classes)[None, :] != anchor_class_A[:, None])
  if isinstance(zeta, str):  # 'count'; a number may be traced
    log_zeta_AK = jnp.log(safe_n_AK)
  else:
    log_zeta_AK = jnp.full_like(safe_n_AK, jnp.log(zeta))

  valid_A = n_pos_A > 0
  if anchor_valid_A is not None:
    valid_A &= anchor_valid_A
  loss_A = closed_form_from_moments(f_AD, mu_pos_AD, quad_pos_A, mu_neg_AKD, quad_neg_AK,
                                    log_zeta_AK, neg_valid_AK, valid_A, tau, lam)
  num_valid = jnp.sum(valid_A)
  denom = jnp.maximum(num_valid, 1).astype(dtype)
  pair_AK = neg_valid_AK & valid_A[:, None]
  pair_denom = jnp.maximum(jnp.sum(pair_AK), 1).astype(dtype)
  sg = jax.lax.stop_gradient
  aux = dict(
      num_valid_anchors=num_valid,
      mean_num_pos=jnp.sum(jnp.where(valid_A, n_pos_A, 0)) / denom,
      mean_num_neg_classes=jnp.sum(pair_AK) / denom,
      pos_sim=sg(jnp.sum(jnp.where(valid_A, sim_pos_A, 0.0)) / denom),
      neg_sim=sg(jnp.sum(jnp.where(pair_AK, m_AK - shift_AK, 0.0)) / pair_denom),
      pos_quad=sg(jnp.sum(jnp.where(valid_A, quad_pos_A, 0.0)) / denom),
      neg_quad=sg(jnp.sum(jnp.where(pair_AK, quad_neg_AK, 0.0)) / pair_denom),
  )
  return jnp.sum(loss_A) / denom, aux


# ------------------------------------------------------------------------------------------------
# References: eq. 4 with explicit keys
# ------------------------------------------------------------------------------------------------


def sampled_infonce(anchor_emb_AD: jax.Array, pos_emb_AND: jax.Array, neg_emb_ARD: jax.Array,
                    pos_valid_AN: jax.Array, neg_valid_AR: jax.Array,
                    tau: float = TAU) -> jax.Array:
  """Eq. 4 for explicit keys: mean over anchors (with a valid positive) of the mean over positives
  v of -log[e^{f.x_v/tau} / (e^{f.x_v/tau} + sum_neg e^{f.x_neg/tau})]."""
  s_pos_AN = jnp.einsum('ad,and->an', anchor_emb_AD, pos_emb_AND) / tau
  s_neg_AR = jnp.einsum('ad,ard->ar', anchor_emb_AD, neg_emb_ARD) / tau
  neg_lse_A = jax.nn.logsumexp(jnp.where(neg_valid_AR, s_neg_AR, -jnp.inf), axis=-1)
  pair_AN2 = jnp.stack([s_pos_AN, jnp.broadcast_to(neg_lse_A[:, None], s_pos_AN.shape)], -1)
  nll_AN = jax.nn.logsumexp(pair_AN2, axis=-1) - s_pos_AN
  n_A = jnp.sum(pos_valid_AN, axis=-1)
  nll_A = jnp.sum(jnp.where(pos_valid_AN, nll_AN, 0.0), -1) / jnp.maximum(n_A, 1)
  valid_A = n_A > 0
  return jnp.sum(jnp.where(valid_A, nll_A, 0.0)) / jnp.maximum(jnp.sum(valid_A), 1)


def expected_infonce_monte_carlo(rng: jax.Array, f_D: jax.Array, mu_pos_D: jax.Array,
                                 cov_pos_DD: jax.Array, mu_neg_KD: jax.Array,
                                 cov_neg_KDD: jax.Array, counts: Sequence[int],
                                 tau: float = TAU, num_samples: int = 100_000) -> dict:
  """Monte-Carlo under Gaussian keys: one positive ~ N(mu+, Sigma+), counts[c] negatives
  ~ N(mu_c, Sigma_c) per draw (counts static). Returns 'infonce' (E of eq. 4) and 'jensen_bound'
  (log E[e^{f.x+/tau} + sum_c counts_c e^{f.x_c/tau}] - f.mu+/tau, the bound eq. 5 has at lam=1)."""
  slot_class = [c for c, n in enumerate(counts) for _ in range(n)]
  mu_RD = jnp.concatenate([mu_pos_D[None], mu_neg_KD[jnp.array(slot_class, int)]])
  cov_RDD = jnp.concatenate([cov_pos_DD[None], cov_neg_KDD[jnp.array(slot_class, int)]])
  # One normal draw for every slot: each separate draw is another threefry program to compile.
  z_SRD = jax.random.normal(rng, (num_samples,) + mu_RD.shape)
  x_SRD = mu_RD + jnp.einsum('srd,red->sre', z_SRD, jnp.linalg.cholesky(cov_RDD))
  s_SR = x_SRD @ f_D / tau
  log_mean_exp = lambda s: jax.nn.logsumexp(s) - jnp.log(s.size)
  terms, start = [log_mean_exp(s_SR[:, 0])], 1
  for n in counts:
    if n:  # an absent class has no term
      terms.append(jnp.log(float(n)) + log_mean_exp(s_SR[:, start:start + n]))
      start += n
  f_SD = jnp.broadcast_to(f_D, (num_samples, f_D.shape[0]))
  infonce = sampled_infonce(f_SD, x_SRD[:, :1], x_SRD[:, 1:], jnp.ones((num_samples, 1), bool),
                            jnp.ones((num_samples, len(slot_class)), bool), tau)
  jensen = jax.nn.logsumexp(jnp.stack(terms)) - f_D @ mu_pos_D / tau
  return dict(infonce=infonce, jensen_bound=jensen)


# ------------------------------------------------------------------------------------------------
# Composition
# ------------------------------------------------------------------------------------------------


def plgcl_from_keys(keys: dict, emb_MD: jax.Array, num_classes: int, *,
                    key_emb_MD: Optional[jax.Array] = None, rng: Optional[jax.Array] = None,
                    num_anchors: Optional[int] = None,
                    anchor_mask_M: Optional[jax.Array] = None, num_pos: int = NUM_POS,
                    tau: float = TAU, lam: float = LAM, zeta: Union[str, float] = 'count',
                    sampler: str = 'entropy', entropy_scope: str = 'class'):
  """PLGCL for a key set: anchors and positives -> eq. 5. Returns (loss, aux).

  `emb_MD` embeds the keys (same order, e.g. their `patch_MS`); anchors are taken from it, keys
  from `key_emb_MD` (e.g. detached, or the teacher's) or from `emb_MD` itself. Anchors: every
  valid key or `num_anchors` drawn with `rng` among the valid ones; `anchor_mask_M` can exclude
  keys from being anchors. Invalid keys are never anchors, positives or negatives.
  """
  m, _ = emb_MD.shape
  if keys['class_M'].shape != (m,):
    raise ValueError(f'{m} embeddings but {keys["class_M"].shape[0]} keys')
  anchor_ok_M = keys['valid_M'] if anchor_mask_M is None else keys['valid_M'] & anchor_mask_M
  anchor_idx_A = select_anchors(m, num_anchors, rng, anchor_ok_M)
  pos = sample_positives(keys, anchor_idx_A, num_pos, sampler, entropy_scope)
  key_emb_MD = emb_MD if key_emb_MD is None else key_emb_MD
  loss, aux = plgcl_loss(emb_MD[anchor_idx_A], key_emb_MD, pos['anchor_class_A'],
                         keys['class_M'], pos['pos_idx_AN'], pos['pos_valid_AN'],
                         anchor_ok_M[anchor_idx_A], num_classes, tau, lam, zeta,
                         key_valid_M=keys['valid_M'])
  aux['class_count_K'] = key_class_counts(keys, num_classes)
  return loss, aux


def plgcl_from_patches(image_BHW: jax.Array, conf_BHWK: jax.Array, emb_BPD: jax.Array, *,
                       patch: int, key_emb_BPD: Optional[jax.Array] = None,
                       rng: Optional[jax.Array] = None, num_anchors: Optional[int] = None,
                       anchor_mask_BP: Optional[jax.Array] = None, num_pos: int = NUM_POS,
                       tau: float = TAU, lam: float = LAM, zeta: Union[str, float] = 'count',
                       sampler: str = 'entropy', entropy_scope: str = 'class',
                       assign: str = 'dominant', min_conf: float = MIN_CONF,
                       stats: Optional[dict[str, jax.Array]] = None):
  """PLGCL with one key per grid cell (assign 'dominant' or 'foreground'). Returns (loss, aux).

  `emb_BPD` embeds the patches of `patch_grid` (same order). For 'per_class' keys, whose
  embeddings depend on which keys are drawn, use `make_keys` and `plgcl_from_keys`. `stats`, when
  the caller already has `patch_statistics(image, conf, patch, assign, min_conf)`, is used instead
  of computing it again.
  """
  _check('assign', assign, GRID_ASSIGNS)
  b, p, d = emb_BPD.shape
  if stats is None:
    stats = patch_statistics(image_BHW, conf_BHWK, patch, assign, min_conf)
  if stats['label_BP'].shape != (b, p):
    raise ValueError(f'{p} embeddings per image but {stats["label_BP"].shape[1]} patches')
  key_emb = None if key_emb_BPD is None else key_emb_BPD.reshape(b * p, d)
  mask = None if anchor_mask_BP is None else anchor_mask_BP.reshape(-1)
  return plgcl_from_keys(grid_keys(stats), emb_BPD.reshape(b * p, d), conf_BHWK.shape[-1],
                         key_emb_MD=key_emb, rng=rng, num_anchors=num_anchors,
                         anchor_mask_M=mask, num_pos=num_pos, tau=tau, lam=lam, zeta=zeta,
                         sampler=sampler, entropy_scope=entropy_scope)
