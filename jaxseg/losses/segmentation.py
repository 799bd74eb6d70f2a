"""Supervised and consistency losses: pure functions of arrays (logits are (B, H, W, K))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# SSL4MIS DiceLoss smoothing; small enough not to bias the loss, large enough that a class absent
# from both prediction and label gives 0/0 -> 1 (loss 0) instead of NaN.
DICE_SMOOTH = 1e-5


def cross_entropy(logits_BHWK: jax.Array, labels_BHW: jax.Array) -> jax.Array:
  """Mean pixel-wise cross entropy against integer labels.

  Written with a one-hot product rather than optax's integer-label gather: the gather's gradient
  is a scatter-add that XLA spends seconds constant-folding at 12x256x256 on a CPU.
  """
  onehot = jax.nn.one_hot(labels_BHW, logits_BHWK.shape[-1], dtype=logits_BHWK.dtype)
  return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits_BHWK, axis=-1), axis=-1))


def soft_dice_loss(logits_BHWK: jax.Array, labels_BHW: jax.Array) -> jax.Array:
  """SSL4MIS `DiceLoss(softmax=True)`: 1 - Dice per class over the whole batch, averaged over all
  classes including background."""
  num_classes = logits_BHWK.shape[-1]
  probs = jax.nn.softmax(logits_BHWK, axis=-1)
  onehot = jax.nn.one_hot(labels_BHW, num_classes, dtype=probs.dtype)
  axes = tuple(range(probs.ndim - 1))
  intersect = jnp.sum(probs * onehot, axis=axes)
  denominator = jnp.sum(probs * probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = (2 * intersect + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
  return jnp.mean(1.0 - dice)


def ce_dice_loss(logits_BHWK: jax.Array, labels_BHW: jax.Array) -> jax.Array:
  """SSL4MIS supervised loss 0.5 * (CE + Dice)."""
  return 0.5 * (cross_entropy(logits_BHWK, labels_BHW) + soft_dice_loss(logits_BHWK, labels_BHW))


def softmax_mse(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """SSL4MIS mean-teacher consistency: mean squared error between the two softmax maps."""
  diff = jax.nn.softmax(student_logits, -1) - jax.nn.softmax(teacher_logits, -1)
  return jnp.mean(diff**2)


def softmax_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """PLGCL eq. 6: cross entropy of the student against the teacher's soft prediction."""
  return optax.softmax_cross_entropy(student_logits, jax.nn.softmax(teacher_logits, -1)).mean()


def hard_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Cross entropy of the student against the teacher's argmax pseudo-label."""
  return cross_entropy(student_logits, jnp.argmax(teacher_logits, -1))


CONSISTENCY_LOSSES = {
    'mse': softmax_mse,
    'ce': softmax_cross_entropy,
    'ce_hard': hard_cross_entropy,
}
