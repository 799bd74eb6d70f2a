"""The registry of loss terms the one train step sums.

A term is a pure function `(StepOutputs, config) -> (scaled loss, metrics)` with flags telling the
step what to compute for it (a teacher forward, unlabeled images). Method issues add terms here
(or in their own module registering with `@register`), never new training loops. A term's weight
is a function of the traced step, so warm-ups and ramps switch on without recompiling.
"""

from __future__ import annotations

import jax.numpy as jnp

# The registry lives a floor below (the method modules import it); importing the methods here
# registers their terms, with no import back.
from jaxseg import methods  # noqa: F401
from jaxseg.errors import ConfigError
from jaxseg.losses import segmentation
from jaxseg.training import schedules
from jaxseg.training.terms import TERMS, LossTerm, StepOutputs, register  # noqa: F401


def resolve(names) -> list[LossTerm]:
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
