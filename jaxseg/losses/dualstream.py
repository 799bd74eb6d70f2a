"""Dual-stream 3D (Karimijafarbigloo et al., 2024): the losses of eqs. 1-7 as array functions.

Two subnets A and B give logits (B, D, H, W, K) and voxel features (B, D, H, W, C). Every function
here is pure and keeps fixed shapes under jit: sets of voxels (reliable, unreliable, disagreeing,
a class) are masks, and empty sets give 0, never NaN.

  eq. 1, 2    `ce_dice`: CE + soft Dice, optionally restricted to a voxel mask.
  §2.1        `normalized_entropy`, `reliable_mask`: entropy filtering of pseudo-labels.
  Fig. 1      `select_pseudo_label`: the argmax of the subnet with the lower supervised loss.
  eqs. 4-5    `disagreement_mask`, `disagreement_l1`: L_reg.
  eqs. 6-7    `prototypes`, `prototype_contrast`: L_c.
  eq. 3       `contrast_weight`, `reg_threshold`: lambda_c and T as functions of the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.losses.segmentation import DICE_SMOOTH

RELIABILITY = ('percentile', 'threshold')
DISTANCES = ('sq_euclidean', 'euclidean')
CONTRAST_SCHEDULES = ('rampup', 'paper', 'constant')
REG_NORMALIZE = ('voxels', 'mask')

# Logit of a class with no prototype: exp() underflows to 0 in float32 but stays finite, so the
# masked softmax has neither inf - inf nor NaN gradients.
_ABSENT = -1e9


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'{name} must be one of {allowed}, got {value!r}')


def _masked_mean(values, mask):
  """Mean of `values` over `mask`; 0 (not NaN) when the mask is empty."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ------------------------------------------------------------------------------------------------
# Eqs. 1-2: CE + Dice, on all voxels (labeled) or on the reliable ones (unlabeled).
# ------------------------------------------------------------------------------------------------


def cross_entropy(logits_BDHWK: jax.Array, labels_BDHW: jax.Array,
                  mask_BDHW: jax.Array | None = None) -> jax.Array:
  """Mean voxel-wise cross entropy against integer labels over `mask` (all voxels if None)."""
  onehot = jax.nn.one_hot(labels_BDHW, logits_BDHWK.shape[-1], dtype=jnp.float32)
  ce = -jnp.sum(onehot * jax.nn.log_softmax(logits_BDHWK.astype(jnp.float32), -1), axis=-1)
  if mask_BDHW is None:
    return jnp.mean(ce)
  return _masked_mean(ce, mask_BDHW)


def dice_loss(logits_BDHWK: jax.Array, labels_BDHW: jax.Array,
              mask_BDHW: jax.Array | None = None, background: bool = False) -> jax.Array:
  """1 - soft Dice per class over the whole batch (voxels in `mask`), averaged over the
  foreground classes (UA-MT/MCF's `dice_loss` on the foreground channel for binary tasks) or over
  all classes with `background`. A class absent from prediction and label scores 1, not 0/0."""
  num_classes = logits_BDHWK.shape[-1]
  probs = jax.nn.softmax(logits_BDHWK.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels_BDHW, num_classes, dtype=jnp.float32)
  if mask_BDHW is not None:
    weight = mask_BDHW.astype(jnp.float32)[..., None]
    probs, onehot = probs * weight, onehot * weight  # weight is 0/1: (p m)^2 = p^2 m
  axes = tuple(range(probs.ndim - 1))
  intersect = jnp.sum(probs * onehot, axis=axes)
  denominator = jnp.sum(probs * probs, axis=axes) + jnp.sum(onehot, axis=axes)
  loss_K = 1.0 - (2 * intersect + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
  return jnp.mean(loss_K if background or num_classes == 1 else loss_K[1:])


def ce_dice(logits_BDHWK: jax.Array, labels_BDHW: jax.Array, mask_BDHW: jax.Array | None = None,
            background: bool = False) -> tuple[jax.Array, jax.Array]:
  """(CE, Dice loss) of eq. 1 (no mask) or eq. 2 (mask = reliable voxels); the loss is their sum."""
  return (cross_entropy(logits_BDHWK, labels_BDHW, mask_BDHW),
          dice_loss(logits_BDHWK, labels_BDHW, mask_BDHW, background))


# ------------------------------------------------------------------------------------------------
# §2.1 and Fig. 1: pseudo-labels and their entropy filtering.
# ------------------------------------------------------------------------------------------------


def normalized_entropy(probs_BDHWK: jax.Array) -> jax.Array:
  """Voxel-wise entropy divided by log K, in [0, 1] whatever the number of classes."""
  probs = probs_BDHWK.astype(jnp.float32)
  # x log x -> 0 at x = 0; the where keeps log(0) out of the gradient too.
  safe = jnp.where(probs > 0, probs, 1.0)
  ent = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(safe), 0.0), axis=-1)
  return ent / jnp.log(probs.shape[-1])


def reliable_mask(entropy_BDHW: jax.Array, mode: str = 'percentile', percentile: float = 80.0,
                  threshold: float = 0.5) -> jax.Array:
  """Voxels whose pseudo-label is reliable (low entropy).

  'percentile': entropy below the `percentile`-th percentile of the batch's entropies (U2PL's
  rule; a voxel at or above it is unreliable), so about `percentile` % of voxels are reliable.
  'threshold': normalized entropy below `threshold`.
  """
  _check('mode', mode, RELIABILITY)
  entropy = jax.lax.stop_gradient(entropy_BDHW)
  if mode == 'percentile':
    cut = jnp.percentile(entropy.reshape(-1), percentile)
  else:
    cut = threshold
  return entropy < cut


def select_pseudo_label(probs_a_BDHWK: jax.Array, probs_b_BDHWK: jax.Array,
                        reliable_a_BDHW: jax.Array, reliable_b_BDHW: jax.Array,
                        use_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Fig. 1: the argmax of subnet B where `use_b` (its supervised loss is the lower), else A's,
  with the chosen subnet's reliability mask. Returns (labels, reliable), both without gradient."""
  labels = jnp.where(use_b, jnp.argmax(probs_b_BDHWK, -1), jnp.argmax(probs_a_BDHWK, -1))
  reliable = jnp.where(use_b, reliable_b_BDHW, reliable_a_BDHW)
  return jax.lax.stop_gradient(labels), jax.lax.stop_gradient(reliable)


def union_pseudo_label(probs_a_BDHWK: jax.Array, probs_b_BDHWK: jax.Array,
                       reliable_a_BDHW: jax.Array, reliable_b_BDHW: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """The authors' code: the union of both argmaxes (the larger class index, i.e. foreground
  wins for a binary task); a voxel is unreliable only when it is so in both subnets."""
  labels = jnp.maximum(jnp.argmax(probs_a_BDHWK, -1), jnp.argmax(probs_b_BDHWK, -1))
  return jax.lax.stop_gradient(labels), jax.lax.stop_gradient(reliable_a_BDHW | reliable_b_BDHW)


# ------------------------------------------------------------------------------------------------
# Eqs. 4-5: L_reg on confident disagreements.
# ------------------------------------------------------------------------------------------------


def disagreement_mask(probs_a_BDHWK: jax.Array, probs_b_BDHWK: jax.Array,
                      threshold) -> jax.Array:
  """Eq. 4: voxels where both subnets are confident (max softmax > T) and their argmaxes differ."""
  probs_a, probs_b = jax.lax.stop_gradient((probs_a_BDHWK, probs_b_BDHWK))
  confident = (jnp.max(probs_a, -1) > threshold) & (jnp.max(probs_b, -1) > threshold)
  return confident & (jnp.argmax(probs_a, -1) != jnp.argmax(probs_b, -1))


def disagreement_l1(probs_a_BDHWK: jax.Array, probs_b_BDHWK: jax.Array, mask_BDHW: jax.Array,
                    normalize: str = 'voxels') -> jax.Array:
  """Eq. 5: sum over voxels of |M (Y_A - Y_B)|_1 over the classes, divided by the number of voxels
  ('voxels': the paper's sum at a scale that does not depend on the crop size) or by |M| ('mask':
  the mean over disagreeing voxels). Gradients reach both subnets."""
  _check('normalize', normalize, REG_NORMALIZE)
  l1 = jnp.sum(jnp.abs(probs_a_BDHWK.astype(jnp.float32) - probs_b_BDHWK.astype(jnp.float32)), -1)
  if normalize == 'voxels':
    return jnp.mean(l1 * mask_BDHW)
  return _masked_mean(l1, mask_BDHW)


# ------------------------------------------------------------------------------------------------
# Eqs. 6-7: prototype contrast.
# ------------------------------------------------------------------------------------------------


def prototypes(features_NC: jax.Array, labels_N: jax.Array, mask_N: jax.Array,
               num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Eq. 6: (K, C) mean feature of the masked voxels of each class, and (K,) whether the class has
  any such voxel (an absent class's prototype is 0 and must be masked by the caller)."""
  member_NK = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32) * mask_N[:, None]
  count_K = jnp.sum(member_NK, axis=0)
  protos_KC = member_NK.T @ features_NC.astype(jnp.float32) / jnp.maximum(count_K, 1.0)[:, None]
  return protos_KC, count_K > 0


def _distances(x_NC, y_KC, distance):
  """(N, K) distances d(x_n, y_k) >= 0. The Euclidean one is exactly 0 at 0 with gradient 0
  there (a prototype against itself) instead of sqrt's infinite one."""
  sq = (jnp.sum(x_NC**2, -1)[:, None] - 2 * x_NC @ y_KC.T + jnp.sum(y_KC**2, -1)[None, :])
  sq = jnp.maximum(sq, 0.0)  # the expansion can round below 0
  if distance == 'sq_euclidean':
    return sq
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def prototype_contrast(features_BDHWC: jax.Array, labels_BDHW: jax.Array,
                       reliable_BDHW: jax.Array, num_classes: int, *,
                       distance: str = 'sq_euclidean', temperature: float = 1.0,
                       separation_weight: float = 1.0) -> tuple[jax.Array, dict]:
  """L_c: prototypes from reliable voxels (eq. 6); each unreliable voxel is pulled to the
  prototype of its pseudo-label class by the cross entropy of eq. 7's softmax over -d / temperature,
  and the prototypes are pushed apart by the same softmax with the prototypes as queries (each
  prototype should be classified as its own class: log sum_j exp(-d(c_k, c_j)), which falls as
  the others move away). Classes without a reliable voxel take no part; an empty unreliable set
  or fewer than two prototypes give 0 for the corresponding part.

  Returns (pull + separation_weight * separation, aux with 'pull', 'separation',
  'num_unreliable' (voxels that entered the pull term) and 'num_prototypes').
  """
  _check('distance', distance, DISTANCES)
  features_NC = features_BDHWC.reshape(-1, features_BDHWC.shape[-1]).astype(jnp.float32)
  labels_N = labels_BDHW.reshape(-1)
  reliable_N = reliable_BDHW.reshape(-1).astype(jnp.float32)
  protos_KC, present_K = prototypes(features_NC, labels_N, reliable_N, num_classes)

  # Eq. 7 for the unreliable voxels; a voxel whose class has no prototype cannot be pulled.
  logits_NK = jnp.where(present_K, -_distances(features_NC, protos_KC, distance) / temperature,
                        _ABSENT)
  logp_NK = jax.nn.log_softmax(logits_NK, axis=-1)
  target_NK = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32)
  nll_N = -jnp.sum(target_NK * logp_NK, axis=-1)
  pulled_N = (1.0 - reliable_N) * jnp.sum(target_NK * present_K, axis=-1)
  pull = _masked_mean(nll_N, pulled_N)

  # Prototype separation: the same softmax, queried by the prototypes themselves.
  d_KK = _distances(protos_KC, protos_KC, distance)
  logits_KK = jnp.where(present_K[None, :], -d_KK / temperature, _ABSENT)
  self_nll_K = -jnp.diagonal(jax.nn.log_softmax(logits_KK, axis=-1))
  separation = _masked_mean(self_nll_K, present_K)

  loss = pull + separation_weight * separation
  return loss, {'pull': pull, 'separation': separation, 'num_unreliable': jnp.sum(pulled_N),
                'num_prototypes': jnp.sum(present_K)}


# ------------------------------------------------------------------------------------------------
# Eq. 3 and §2.2: weights and thresholds as functions of the traced step.
# ------------------------------------------------------------------------------------------------


def contrast_weight(step, t_max: float, base: float = 0.1, schedule: str = 'rampup',
                    interval: int = 1):
  """lambda_c at `step`, with t = (step // interval) * interval / t_max clipped to [0, 1].

  'rampup': base * exp(-5 (1 - t)^2), the usual sigmoid ramp-up (0.1 e^-5 at t = 0, 0.1 at
  t_max), also what the authors' code uses. 'paper': base * exp(4 (1 - t)^2) as printed in §3.1
  (0.1 e^4 = 5.46 at t = 0, falling to 0.1), kept to reproduce the text. 'constant': base.
  """
  _check('schedule', schedule, CONTRAST_SCHEDULES)
  t = jnp.clip((jnp.asarray(step) // interval) * interval / max(t_max, 1), 0.0, 1.0)
  if schedule == 'rampup':
    return base * jnp.exp(-5.0 * (1.0 - t)**2)
  if schedule == 'paper':
    return base * jnp.exp(4.0 * (1.0 - t)**2)
  return base * jnp.ones_like(t)


def reg_threshold(step, t_max: float, start: float, end: float):
  """T of eq. 4, moved linearly from `start` at step 0 to `end` at `t_max` (constant after); the
  paper only says that T is adjusted during training."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(t_max, 1), 0.0, 1.0)
  return start + (end - start) * t
