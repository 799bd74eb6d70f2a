"""Orbax checkpoints of the train state together with the data iterators' positions.

A run directory holds `checkpoints/latest/<step>/` (the last few, for `--resume`) and
`checkpoints/best/<step>/` (the one with the best mean validation Dice, for evaluation).
Each step folder has `state` (the TrainState pytree), `data` (the Grain iterators' positions,
one JSON file per process: `process_I-of-N.json`) and `meta` (step, validation scores, JSON).
With several processes every process takes part in each save and restore (Orbax's
multi-process checkpointing: process 0 writes the replicated state, each process its own data
position), and a run resumes only on the process count it was saved with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseg.errors import ConfigError, JaxsegError


class ProcessDataHandler(ocp.CheckpointHandler):
  """Each process's data-iterator position as its own JSON file (Orbax's JsonCheckpointHandler
  writes from process 0 only; grain's handler takes one grain iterator, not the paired one)."""

  def save(self, directory, args: ProcessDataSave):
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory, args: ProcessDataRestore | None = None):
    del args
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if not (directory / name).exists() and jax.process_count() == 1 and (
        directory / 'metadata').exists():
      name = 'metadata'  # a run saved before positions were per process (Orbax's JsonSave)
    if not (directory / name).exists():
      _refuse_process_count(directory.parent.parent.parent.parent, _saved_counts(directory))
    return json.loads((directory / name).read_text())


def _saved_counts(data_dir) -> list[str]:
  return sorted({m.group(1) for f in os.listdir(data_dir)
                 if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', f))})


def _refuse_process_count(workdir, counts: list[str]) -> None:
  raise ConfigError(
      f'{workdir}: saved by {" or ".join(counts) or "an unknown number of"} process(es), resumed '
      f'with {jax.process_count()}; resume on the same process count (the data streams\' '
      'positions are per process)')


def check_process_count(workdir: str) -> None:
  """Refuses, before any work, to resume a run on another process count than it was saved on."""
  root = os.path.join(workdir, 'checkpoints', 'latest')
  steps = [int(d) for d in os.listdir(root) if d.isdigit()] if os.path.isdir(root) else []
  if not steps:
    return
  data_dir = os.path.join(root, str(max(steps)), 'data')
  counts = _saved_counts(data_dir) if os.path.isdir(data_dir) else []
  if counts and counts != [str(jax.process_count())]:
    _refuse_process_count(workdir, counts)


@ocp.args.register_with_handler(ProcessDataHandler, for_save=True)
@dataclasses.dataclass
class ProcessDataSave(ocp.args.CheckpointArgs):
  state: dict[str, Any]


@ocp.args.register_with_handler(ProcessDataHandler, for_restore=True)
@dataclasses.dataclass
class ProcessDataRestore(ocp.args.CheckpointArgs):
  pass


class Checkpoints:
  """One Orbax CheckpointManager per kind ('latest', 'best'), behind one small interface."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    extra = {}
    if not create and jax.process_count() > 1:
      # A reader (evaluation, the report) in one process of several: it restores alone, where
      # a training run's managers save and restore with every process.
      me = jax.process_index()
      extra['multiprocessing_options'] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me})
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=create, **extra)
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
        data=ProcessDataSave(data_state or {}),
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
        data=ProcessDataRestore(),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['data'], restored['meta']

  def close(self) -> None:
    self.latest.close()
    self.best.close()
