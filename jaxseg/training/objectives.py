"""The registry of loss terms the one train step sums.

A term is a pure function `(StepOutputs, config) -> (scaled loss, metrics)` with flags telling the
step what to compute for it (a teacher forward, unlabeled images). Method issues add terms here
(or in their own module registering with `@register`), never new training loops. A term's weight
is a function of the traced step, so warm-ups and ramps switch on without recompiling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import segmentation
from jaxseg.training import schedules


@dataclasses.dataclass(frozen=True)
class StepOutputs:
  """Everything a loss term may read. Model outputs are dicts (see models.UNet).

  labeled: {'image': (B, H, W), 'label': (B, H, W)} (plus 'image_twin' with
    data.labeled_views='twin'), or None when no term needs labeled images.
  unlabeled: {'image_weak', 'image_strong'} or None.
  student_labeled: student outputs on labeled images, or None.
  student_unlabeled: student outputs on the strong view, or None.
  teacher_unlabeled: teacher outputs on the weak view (gradient stopped), or None.
  step: the traced step counter, before this update.
  apply: `apply(x_BHWC, method=None)` runs the student (train mode, current parameters, so the
    result is differentiable) for terms that need another forward pass, e.g. on patches. Batch
    statistics of such passes are discarded.
  rng: a key for the terms' own random draws.
  """

  labeled: dict[str, jax.Array] | None
  unlabeled: dict[str, jax.Array] | None
  student_labeled: dict[str, jax.Array] | None
  student_unlabeled: dict[str, jax.Array] | None
  teacher_unlabeled: dict[str, jax.Array] | None
  step: jax.Array
  apply: Callable[..., Any] | None = None
  rng: jax.Array | None = None


LossFn = Callable[[StepOutputs, ml_collections.ConfigDict], tuple[jax.Array, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class LossTerm:
  name: str
  fn: LossFn
  needs_unlabeled: bool = False
  needs_teacher: bool = False
  needs_labeled: bool = True


TERMS: dict[str, LossTerm] = {}


def register(name: str, *, needs_unlabeled: bool = False, needs_teacher: bool = False,
             needs_labeled: bool = True):
  """Adds a term; `needs_labeled=False` for terms that use no labeled images (global contrast),
  so a run made only of such terms reads and forwards no labeled batch."""
  def decorate(fn: LossFn) -> LossFn:
    TERMS[name] = LossTerm(name, fn, needs_unlabeled, needs_teacher, needs_labeled)
    return fn
  return decorate


def resolve(names) -> list[LossTerm]:
  import jaxseg.methods  # noqa: F401  (registers the methods' terms)
  unknown = [n for n in names if n not in TERMS]
  if unknown:
    raise ConfigError(f'losses: unknown loss term(s) {unknown}; known: {", ".join(sorted(TERMS))}')
  if not names:
    raise ConfigError('losses: at least one loss term is needed')
  return [TERMS[n] for n in names]


SUPERVISED_LOSSES = {
    'ce_dice': segmentation.ce_dice_loss,  # SSL4MIS
    'ce': segmentation.cross_entropy,  # PLGCL eq. 7
    'dice': segmentation.soft_dice_loss,
}


@register('supervised')
def supervised(out: StepOutputs, config):
  kind = config.supervised.kind
  if kind not in SUPERVISED_LOSSES:
    raise ConfigError(f'supervised.kind: unknown {kind!r}; known: {", ".join(SUPERVISED_LOSSES)}')
  logits, labels = out.student_labeled['logits'], out.labeled['label']
  loss = SUPERVISED_LOSSES[kind](logits, labels)
  return loss, {'supervised': loss,
                'ce': segmentation.cross_entropy(logits, labels),
                'dice_loss': segmentation.soft_dice_loss(logits, labels)}


@register('mean_teacher', needs_unlabeled=True, needs_teacher=True)
def mean_teacher(out: StepOutputs, config):
  m = config.mean_teacher
  if m.consistency not in segmentation.CONSISTENCY_LOSSES:
    raise ConfigError(f'mean_teacher.consistency: unknown {m.consistency!r}; '
                      f'known: {", ".join(segmentation.CONSISTENCY_LOSSES)}')
  consistency = segmentation.CONSISTENCY_LOSSES[m.consistency](
      out.student_unlabeled['logits'], out.teacher_unlabeled['logits'])
  weight = m.weight * schedules.sigmoid_rampup(out.step, m.rampup_length, m.rampup_interval)
  weight = jnp.where(out.step >= m.start_step, weight, 0.0)
  return weight * consistency, {'consistency': consistency, 'consistency_weight': weight}
