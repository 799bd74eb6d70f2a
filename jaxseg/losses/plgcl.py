"""PLGCL (Basak & Yin, CVPR 2023): class-aware patch sampling (§3.1) and the pseudo-label guided
contrastive loss (§3.2, eq. 5).

Pure functions of arrays with fixed shapes under jit: sets of patches are masks or fixed-size index
arrays with a validity mask, never data-dependent shapes. Shapes: B images, P patches per image,
M = B * P keys, A anchors, N positives per anchor, K classes (0 = background), D embedding size,
S = patch * patch pixels.

Pipeline: `patch_statistics` (eqs. 1-3 and the patch's class) -> `select_anchors` and
`sample_positives` (n nearest keys) -> `plgcl_loss` (eq. 5 through `closed_form_from_moments`);
`plgcl_from_patches` composes them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

# Paper values (§4): temperature, weight of the covariance term, positives per anchor.
TAU = 0.2
LAM = 4.0
NUM_POS = 20
# 'foreground' assignment: a patch whose best foreground class has less mean confidence than this
# is background.
MIN_CONF = 0.1

ASSIGNS = ('dominant', 'foreground')
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
  """
  _check('assign', assign, ASSIGNS)
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
  accepted. Returns avg_BPK (eq. 1), ent_BPK (eq. 2: mean of F(I * C^k)), label_BP and
  patches_BPSK (the attended patches I * C^k, flattened, for the cosine sampler).
  """
  if image_BHW.ndim == 4:
    image_BHW = image_BHW[..., 0]
  attended_BHWK = image_BHW[..., None] * conf_BHWK  # I^k = I (.) C^k
  avg_BPK = patch_grid(conf_BHWK, patch).mean(axis=(2, 3))
  att_BPppK = patch_grid(attended_BHWK, patch)
  ent_BPK = binary_entropy(att_BPppK).mean(axis=(2, 3))
  b, p, _, _, k = att_BPppK.shape
  return dict(avg_BPK=avg_BPK, ent_BPK=ent_BPK,
              label_BP=assign_patch_classes(avg_BPK, assign, min_conf),
              patches_BPSK=att_BPppK.reshape(b, p, patch * patch, k))


# ------------------------------------------------------------------------------------------------
# §3.1: anchors and positives
# ------------------------------------------------------------------------------------------------


def select_anchors(num_keys: int, num_anchors: Optional[int] = None,
                   rng: Optional[jax.Array] = None) -> jax.Array:
  """Anchor indices into the M keys: all, or `num_anchors` distinct ones drawn with `rng`."""
  if num_anchors is None or num_anchors >= num_keys:
    return jnp.arange(num_keys)
  if rng is None:
    raise ValueError('a PRNG key is needed to draw a subset of anchors')
  return jax.random.choice(rng, num_keys, (num_anchors,), replace=False)


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


def sample_positives(stats: dict, anchor_idx_A: jax.Array, num_pos: int = NUM_POS,
                     sampler: str = 'entropy', entropy_scope: str = 'class',
                     key_valid_M: Optional[jax.Array] = None) -> dict:
  """Positives for anchors indexing the flattened patches of `patch_statistics`' output.

  Returns key_class_M, anchor_class_A, pos_idx_AN (indices into the M = B * P keys) and
  pos_valid_AN. Negatives are implicit: the keys of every other class (see `plgcl_loss`).
  """
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  key_class_M = flat(stats['label_BP'])
  anchor_class_A = key_class_M[anchor_idx_A]
  dist_AM = sampling_distance(sampler, anchor_idx_A, anchor_class_A, flat(stats['ent_BPK']),
                              flat(stats['avg_BPK']), flat(stats['patches_BPSK']))
  pos_idx_AN, pos_valid_AN = nearest_positives(dist_AM, key_class_M, anchor_idx_A, num_pos,
                                               entropy_scope, key_valid_M)
  return dict(key_class_M=key_class_M, anchor_class_A=anchor_class_A, pos_idx_AN=pos_idx_AN,
              pos_valid_AN=pos_valid_AN)


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
  Gaussian keys. Invalid entries may hold anything (NaN included): they are replaced by safe
  values before use, so no NaN reaches the value or the gradient.
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


def plgcl_from_patches(image_BHW: jax.Array, conf_BHWK: jax.Array, emb_BPD: jax.Array, *,
                       patch: int, key_emb_BPD: Optional[jax.Array] = None,
                       rng: Optional[jax.Array] = None, num_anchors: Optional[int] = None,
                       anchor_mask_BP: Optional[jax.Array] = None, num_pos: int = NUM_POS,
                       tau: float = TAU, lam: float = LAM, zeta: Union[str, float] = 'count',
                       sampler: str = 'entropy', entropy_scope: str = 'class',
                       assign: str = 'dominant', min_conf: float = MIN_CONF,
                       stats: Optional[dict[str, jax.Array]] = None):
  """PLGCL for a batch: statistics -> anchors and positives -> eq. 5. Returns (loss, aux).

  `emb_BPD` embeds the patches of `patch_grid` (same order); anchors are taken from it, keys from
  `key_emb_BPD` (e.g. the teacher's) or from `emb_BPD` itself. Anchors: all B * P patches or
  `num_anchors` drawn with `rng`; `anchor_mask_BP` can exclude patches from being anchors.
  `stats`, when the caller already has `patch_statistics(image, conf, patch, assign, min_conf)`,
  is used instead of computing it again.
  """
  b, p, d = emb_BPD.shape
  if stats is None:
    stats = patch_statistics(image_BHW, conf_BHWK, patch, assign, min_conf)
  if stats['label_BP'].shape != (b, p):
    raise ValueError(f'{p} embeddings per image but {stats["label_BP"].shape[1]} patches')
  anchor_idx_A = select_anchors(b * p, num_anchors, rng)
  pos = sample_positives(stats, anchor_idx_A, num_pos, sampler, entropy_scope)
  emb_MD = emb_BPD.reshape(b * p, d)
  key_emb_MD = emb_MD if key_emb_BPD is None else key_emb_BPD.reshape(b * p, d)
  anchor_valid_A = None if anchor_mask_BP is None else anchor_mask_BP.reshape(-1)[anchor_idx_A]
  loss, aux = plgcl_loss(emb_MD[anchor_idx_A], key_emb_MD, pos['anchor_class_A'],
                         pos['key_class_M'], pos['pos_idx_AN'], pos['pos_valid_AN'],
                         anchor_valid_A, conf_BHWK.shape[-1], tau, lam, zeta)
  aux['class_count_K'] = jnp.bincount(pos['key_class_M'], length=conf_BHWK.shape[-1])
  return loss, aux
