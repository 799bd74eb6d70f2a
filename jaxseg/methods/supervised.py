"""The supervised segmentation loss on labeled images: the `supervised` term.

Every 2D method adds its own terms to this one (SSL4MIS, PLGCL eq. 7, Hu et al.'s fine-tuning,
LCLPL's Dice); `supervised.kind` picks the loss.
"""

from __future__ import annotations

import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import segmentation
from jaxseg.methods.term import LossTerm, StepOutputs

LOSSES = {
    'ce_dice': segmentation.ce_dice_loss,  # SSL4MIS
    'ce': segmentation.cross_entropy,  # PLGCL eq. 7
    'dice': segmentation.soft_dice_loss,
}


def blocks() -> dict[str, ml_collections.ConfigDict]:
  return {'supervised': ml_collections.ConfigDict(dict(kind='ce_dice'))}


def supervised(out: StepOutputs, config):
  kind = config.supervised.kind
  if kind not in LOSSES:
    raise ConfigError(f'supervised.kind: unknown {kind!r}; known: {", ".join(LOSSES)}')
  logits, labels = out.student_labeled['logits'], out.labeled.label
  loss = LOSSES[kind](logits, labels)
  return loss, {'supervised': loss,
                'ce': segmentation.cross_entropy(logits, labels),
                'dice_loss': segmentation.soft_dice_loss(logits, labels)}


TERM = LossTerm('supervised', supervised, blocks)
