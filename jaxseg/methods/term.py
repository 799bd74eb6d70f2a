"""What a loss term is, what it receives, and the typed batches the step hands it.

The bottom floor of the methods: every method module (jaxseg/methods/*.py) builds its `LossTerm`
from these types and `jaxseg/methods/__init__.py` lists them in one table; the train step
(jaxseg/training/step.py) reads the table. Nothing here imports a method or the step.

A term is a pure function `(StepOutputs, config) -> (scaled loss, metrics)` together with what the
step must compute for it (labeled or unlabeled forwards, an EMA teacher), its config blocks and
how its step-counted schedules shrink with the step budget. A term's weight is a function of the
traced step, so warm-ups and ramps switch on without recompiling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import flax.struct
import jax
import ml_collections


@flax.struct.dataclass
class Labeled:
  """A labeled batch: images (B, *spatial) float32, labels (B, *spatial) int32, and with
  `data.labeled_views='twin'` an intensity-only twin of each image."""

  image: jax.Array
  label: jax.Array
  image_twin: jax.Array | None = None


@flax.struct.dataclass
class Unlabeled:
  """An unlabeled batch: two views (B, *spatial) of each image (the teacher reads the weak one,
  the student the strong one) and, in a self-training stage, pseudo-labels (B, *spatial)."""

  image_weak: jax.Array
  image_strong: jax.Array
  label: jax.Array | None = None


def _typed(cls, batch, what: str):
  if batch is None or isinstance(batch, cls):
    return batch
  if not isinstance(batch, Mapping):
    raise TypeError(f'{what} batch: expected {cls.__name__} or a mapping, got {type(batch)}')
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(batch) - names)
  if unknown:
    raise ValueError(f'{what} batch: unknown key(s) {unknown}; known: {sorted(names)}')
  return cls(**batch)


def as_labeled(batch) -> Labeled | None:
  """The data pipeline's labeled dict (or a `Labeled`, or None) as a `Labeled`."""
  return _typed(Labeled, batch, 'labeled')


def as_unlabeled(batch) -> Unlabeled | None:
  """The data pipeline's unlabeled dict (or an `Unlabeled`, or None) as an `Unlabeled`."""
  return _typed(Unlabeled, batch, 'unlabeled')


@dataclasses.dataclass(frozen=True)
class StepOutputs:
  """Everything a loss term may read. Model outputs are dicts (see models.UNet).

  labeled: the labeled batch, or None when no term needs labeled images.
  unlabeled: the unlabeled batch, or None.
  student_labeled: student outputs on labeled images, or None.
  student_unlabeled: student outputs on the strong view, or None.
  teacher_unlabeled: teacher outputs on the teacher's input (gradient stopped), or None.
  step: the traced step counter, before this update.
  apply: `apply(x_BHWC, method=None)` runs the student (train mode, current parameters, so the
    result is differentiable) for terms that need another forward pass, e.g. on patches. Batch
    statistics of such passes are discarded.
  rng: a key for the terms' own random draws.
  """

  labeled: Labeled | None
  unlabeled: Unlabeled | None
  student_labeled: dict[str, jax.Array] | None
  student_unlabeled: dict[str, jax.Array] | None
  teacher_unlabeled: dict[str, jax.Array] | None
  step: jax.Array
  apply: Callable[..., Any] | None = None
  rng: jax.Array | None = None


LossFn = Callable[[StepOutputs, ml_collections.ConfigDict], tuple[jax.Array, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Teacher:
  """An EMA teacher a term needs: how its input is made from the unlabeled batch, and the decay
  alpha of its update `teacher <- alpha teacher + (1 - alpha) student` (optax.incremental_update).

  input_fn(unlabeled, rng, config) -> images (B, *spatial)
  decay_fn(step, config) -> alpha, traced
  """

  input_fn: Callable[[Unlabeled, jax.Array, ml_collections.ConfigDict], jax.Array]
  decay_fn: Callable[[jax.Array, ml_collections.ConfigDict], jax.Array]


def _no_schedules(config, factor: float, ema: bool) -> None:
  del config, factor, ema


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """A loss term of the train step and what it needs.

  blocks: () -> {name: ConfigDict} of the term's default config blocks; a run's config holds the
    blocks of the terms it uses (jaxseg.config.base_config), and two terms may share a block.
  scale_schedules(config, factor, ema): multiplies the term's step-counted schedules by `factor`
    (jaxseg.config.scale_schedules is the rule); `ema` says whether an EMA horizon scales too.
  needs_labeled=False: the term uses no labeled images (global contrast), so a run made only of
    such terms reads and forwards no labeled batch.
  """

  name: str
  fn: LossFn
  blocks: Callable[[], dict[str, ml_collections.ConfigDict]]
  scale_schedules: Callable[[ml_collections.ConfigDict, float, bool], None] = _no_schedules
  needs_unlabeled: bool = False
  needs_labeled: bool = True
  teacher: Teacher | None = None

  @property
  def needs_teacher(self) -> bool:
    return self.teacher is not None
