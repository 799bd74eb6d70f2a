"""Orbax checkpoints of the train state together with the data iterators' positions.

A run directory holds `checkpoints/latest/<step>/` (the last few, for `--resume`) and
`checkpoints/best/<step>/` (the one with the best mean validation Dice, for evaluation).
Each step folder has `state` (the TrainState pytree), `data` (Grain iterator state, JSON) and
`meta` (step, validation scores, JSON).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseg.errors import JaxsegError


class Checkpoints:
  """One Orbax CheckpointManager per kind ('latest', 'best'), behind one small interface."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=create)
    items = ('state', 'data', 'meta')
    self.latest = ocp.CheckpointManager(os.path.join(root, 'latest'), options=options(keep),
                                        item_names=items)
    self.best = ocp.CheckpointManager(os.path.join(root, 'best'), options=options(1),
                                      item_names=items)

  def save(self, kind: str, step: int, state, data_state: dict[str, Any] | None,
           meta: dict[str, Any]) -> None:
    manager = getattr(self, kind)
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(meta)), force=True)
    # Block: a checkpoint is only relied on (e.g. after a NaN stops the run) once it is on disk.
    manager.wait_until_finished()

  def latest_step(self, kind: str = 'latest') -> int | None:
    return getattr(self, kind).latest_step()

  def restore(self, kind: str, state_template, step: int | None = None):
    """Returns (state, data_state, meta); the state takes the template's shardings."""
    manager = getattr(self, kind)
    step = manager.latest_step() if step is None else step
    if step is None:
      raise JaxsegError(f'{manager.directory}: no {kind} checkpoint to restore')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['data'], restored['meta']

  def close(self) -> None:
    self.latest.close()
    self.best.close()
