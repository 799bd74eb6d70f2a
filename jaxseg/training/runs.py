"""Opening a finished run: its config, its model and a restored train state, in one place.

Evaluation (`jaxseg.evaluate`), prediction (`jaxseg.predict`), the report (`jaxseg.report`) and
the next stage of a staged run (stages.py) all start from a run directory's `config.json` and a
checkpoint of it: `open_run(workdir, 'best' | 'last' | step)` builds the model, restores the state
into a template of its shapes and closes Orbax's checkpoint managers before returning, whether the
restore worked or not (`checkpoints(workdir)`: an open manager keeps threads and file handles).

This module sits in training/ because it reads the training state's checkpoints; evaluation/
stays below it (the forward pass it hands out is `evaluation.inference.make_logits_fn`'s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator

import flax.linen as nn
import ml_collections
import numpy as np

from jaxseg import config as config_lib
from jaxseg.errors import DataError, JaxsegError
from jaxseg.evaluation.inference import make_logits_fn
from jaxseg.models import build_model
from jaxseg.training import checkpoint, schedules, step as step_lib

# What `checkpoint` may name besides a step number; 'last' and 'latest' are one kind.
CHECKPOINTS = ('best', 'last', 'latest')


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  """A run's config and model with the state of one of its checkpoints.

  `logits_fn` is the evaluation forward pass: (N, S, S, 1) or (N, D, H, W, 1) images to logits,
  with running batch statistics and no dropout.
  """

  workdir: str
  config: ml_collections.ConfigDict
  model: nn.Module
  state: Any  # training/step.py's TrainState
  step: int
  meta: dict[str, Any]  # what the checkpoint saved beside the state (step, best Dice...)
  logits_fn: Callable[[np.ndarray], np.ndarray]

  @property
  def variables(self) -> dict[str, Any]:
    """The model's variables, as `model.apply` takes them."""
    return {'params': self.state.params, 'batch_stats': self.state.batch_stats}


@contextlib.contextmanager
def checkpoints(workdir: str) -> Iterator[checkpoint.Checkpoints]:
  """The run's checkpoints, read only, closed when the block ends however it ends; a run without
  a checkpoints folder is named."""
  ckpts = checkpoint.Checkpoints.of_finished_run(workdir)
  try:
    yield ckpts
  finally:
    ckpts.close()


def saved_steps(workdir: str, kind: str = 'latest') -> list[int]:
  """The steps of the `kind` ('latest' or 'best') checkpoints in `workdir`, oldest first; [] when
  it has none, or no checkpoints folder yet (a stage that has not started)."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return []
  with checkpoints(workdir) as ckpts:
    return sorted(getattr(ckpts, _kind(kind)).all_steps())


def open_run(workdir: str, checkpoint: str | int = 'best', *,
             config: ml_collections.ConfigDict | None = None) -> RestoredRun:
  """The run in `workdir` restored from `checkpoint`: 'best', 'last' (or 'latest') or a step.

  `config` stands for `workdir/config.json` where that is not the checkpoints' own config (a stage
  of a staged run keeps the whole run's). A folder that is not a run, a missing or unreadable
  checkpoint and a step that was not saved each raise one JaxsegError line naming the path.
  """
  if config is None:
    config = config_lib.read_run_config(workdir)
  model = build_model(config)
  template = step_lib.abstract_state(model, schedules.optimizer(config), config)
  with checkpoints(workdir) as ckpts:
    kind, step = _kind_and_step(ckpts, checkpoint, workdir)
    state, _, meta = ckpts.restore(kind, template, step)
  return RestoredRun(workdir, config, model, state, int(meta['step']), meta,
                     make_logits_fn(model)(state))


def parse_checkpoint(name: str | int) -> str | int:
  """'best' or 'latest' (for 'last' too), or a step number, from a `--checkpoint` argument."""
  if name in CHECKPOINTS:
    return _kind(str(name))
  try:
    return int(name)
  except ValueError:
    raise JaxsegError(f'--checkpoint {name!r}: expected best, last or a step number') from None


def _kind(name: str) -> str:
  return 'latest' if name == 'last' else name


def _kind_and_step(ckpts: checkpoint.Checkpoints, name: str | int,
                   workdir: str) -> tuple[str, int | None]:
  """('best' or 'latest', a step or None for that kind's newest) for a `checkpoint` argument."""
  wanted = parse_checkpoint(name)
  if isinstance(wanted, str):
    return wanted, None
  for kind in ('latest', 'best'):
    if wanted in getattr(ckpts, kind).all_steps():
      return kind, wanted
  saved = sorted(set(ckpts.latest.all_steps()) | set(ckpts.best.all_steps()))
  raise DataError(f'{os.path.join(workdir, "checkpoints")}: no checkpoint at step {wanted} '
                  f'(saved steps: {", ".join(map(str, saved)) or "none"})')
