"""The loss-term registry: what a term receives (`StepOutputs`) and how it is registered.

The bottom floor of the step's objectives: method modules (jaxseg/methods) register their terms
here, and `objectives` imports them, so neither imports the other back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections


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
