"""Orbax checkpoints of the train state together with the data iterators' positions.

A run directory holds `checkpoints/latest/<step>/` (the last few, for `--resume`) and
`checkpoints/best/<step>/` (the one with the best mean validation Dice, for evaluation).
Each step folder has `state` (the TrainState pytree), `data` (the Grain iterators' positions,
one JSON file per process: `process_I-of-N.json`) and `meta` (step, validation scores, JSON).
With several processes every process takes part in each save and restore (Orbax's
multi-process checkpointing: process 0 writes the replicated state, each process its own data
position), and a run resumes only on the process count it was saved with.

Failures reach the user as one line naming the checkpoint: a save that runs out of space or
permission removes its half-written folder (the previous checkpoint stays restorable) and raises
StorageError; a checkpoint that cannot be read back raises StorageError listing the checkpoints of
the run that still restore. Orbax removes the temporary folder a killed save left behind when a
run opens its checkpoints again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxseg.errors import ConfigError, JaxsegError, StorageError
from jaxseg.training import rundir


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


def _template_for_saved_teacher(manager, step: int, state_template):
  """(restore template, whether to drop the teacher after restoring).

  Until configs held only their own terms, every run's state kept an EMA teacher; a run whose
  terms need none (supervised, dual-stream, Hu et al.'s stages) now has no teacher in its state.
  A checkpoint saved with a teacher restores into such a state: the teacher is read with the
  student's shapes (it is a copy of the student's structure) and dropped.
  """
  if getattr(state_template, 'teacher_params', ()) is not None:
    return state_template, False
  # The manager knows an item's handler only once it saved or restored one: read the tree alone.
  folder = os.path.join(os.fspath(manager.directory), str(step), 'state')
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(folder)).tree
  if not saved.get('teacher_params'):  # a teacher-less state saves the field as None
    return state_template, False
  return state_template.replace(teacher_params=state_template.params,
                                teacher_batch_stats=state_template.batch_stats), True


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
    # Training (create) sweeps up the temporary folder of a save a kill interrupted; readers
    # (evaluate, predict) change nothing.
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=create,
                                                     cleanup_tmp_directories=create, **extra)
    items = ('state', 'data', 'meta')
    self.latest = ocp.CheckpointManager(os.path.join(root, 'latest'), options=options(keep),
                                        item_names=items)
    self.best = ocp.CheckpointManager(os.path.join(root, 'best'), options=options(1),
                                      item_names=items)

  def save(self, kind: str, step: int, state, data_state: dict[str, Any] | None,
           meta: dict[str, Any]) -> None:
    manager = getattr(self, kind)
    folder = os.fspath(manager.directory)
    with _orbax_noise_held():
      try:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ProcessDataSave(data_state or {}),
            meta=ocp.args.JsonSave(meta)), force=True)
        # Block: a checkpoint is only relied on (e.g. after a NaN stops the run) once it is on
        # disk.
        manager.wait_until_finished()
      except (OSError, ValueError, RuntimeError) as e:
        error = rundir.storage_error(e, folder)
        if error is None:
          raise
        _join_orbax_threads()  # they would go on writing into the folder removed here
        for partial in glob.glob(os.path.join(folder, f'{step}.orbax-checkpoint-tmp*')):
          shutil.rmtree(partial, ignore_errors=True)
        previous = [s for s in manager.all_steps() if s != step]
        kept = f'; checkpoint {previous[-1]} is kept' if previous else ''
        raise StorageError(f'{error} (checkpoint {step} not saved{kept})') from e

  def latest_step(self, kind: str = 'latest') -> int | None:
    return getattr(self, kind).latest_step()

  def restore(self, kind: str, state_template, step: int | None = None):
    """Returns (state, data_state, meta); the state takes the template's shardings."""
    manager = getattr(self, kind)
    step = manager.latest_step() if step is None else step
    if step is None:
      raise JaxsegError(f'{manager.directory}: no {kind} checkpoint to restore')
    with _orbax_noise_held():
      try:
        return self._restore(manager, step, state_template)
      except JaxsegError:
        raise  # already one line (a resume on another process count)
      except Exception as e:  # noqa: BLE001 (Orbax and TensorStore raise many kinds for one cause)
        _join_orbax_threads()
        usable = [f'{other} {s}' for other in ('best', 'latest')
                  for s in getattr(self, other).all_steps()
                  if (other, s) != (kind, step) and self._restores(other, s, state_template)]
        others = (f'; still usable: {", ".join(usable)}' if usable
                  else '; no other checkpoint of this run restores')
        # TensorStore appends a long dump after 'See full TensorStore details'.
        reason = (str(e).strip().splitlines() or [''])[0].split('. See full')[0][:200]
        raise StorageError(f'{os.path.join(manager.directory, str(step))}: {kind} checkpoint '
                           f'unreadable ({type(e).__name__}: {reason}){others}') from None

  @staticmethod
  def _restore(manager, step: int, state_template):
    template, drop_teacher = _template_for_saved_teacher(manager, step, state_template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ProcessDataRestore(),
        meta=ocp.args.JsonRestore()))
    state = restored['state']
    if drop_teacher:
      state = state.replace(teacher_params=None, teacher_batch_stats=None)
    return state, restored['data'], restored['meta']

  def _restores(self, kind: str, step: int, state_template) -> bool:
    try:
      self._restore(getattr(self, kind), step, state_template)
    except Exception:  # noqa: BLE001 (only asking whether it restores)
      return False
    return True

  @classmethod
  def of_finished_run(cls, workdir: str) -> 'Checkpoints':
    """A saved run's checkpoints, read only; a missing checkpoints folder is named."""
    root = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(root):
      raise StorageError(f'{root}: missing (moved or deleted?); evaluation and prediction '
                         'restore the run from it')
    return cls(workdir, create=False)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _join_orbax_threads(timeout: float = 60.0) -> None:
  """Waits for Orbax's reader and writer threads. After one fails and its error reaches the
  caller, the others go on until their TensorStore reads or writes end (a write recreating the
  folders it writes in), failing noisily.
  (Orbax's thread class is private: without it, nothing is waited for.)"""
  try:
    from orbax.checkpoint._src.futures import future  # noqa: PLC0415
    thread_class = future._SignalingThread  # noqa: SLF001
  except (ImportError, AttributeError):
    return
  end = time.monotonic() + timeout
  for thread in threading.enumerate():
    if isinstance(thread, thread_class) and thread is not threading.current_thread():
      with contextlib.suppress(Exception):  # Orbax's join re-raises the thread's error
        thread.join(max(0.0, end - time.monotonic()))


# Orbax logs through absl; asyncio reports the futures of a failed save that nobody awaited.
NOISY_LOGGERS = ('absl', 'asyncio')


class _OrbaxNoise(logging.Filter):
  """Holds back the ERROR records of Orbax's threads, and the exceptions its asyncio tasks and
  TensorStore callbacks leave unraisable (`Event loop is closed`, a read error in a coroutine
  nobody awaits any more) once one part of a save or restore has failed."""

  def __init__(self):
    super().__init__()
    self.records = []
    self.unraisables = []
    self.previous_hook = sys.unraisablehook

  def filter(self, record):
    if record.levelno >= logging.ERROR:
      self.records.append(record)
      return False
    return True

  def install(self):
    for name in NOISY_LOGGERS:
      logging.getLogger(name).addFilter(self)
    sys.unraisablehook = self.unraisables.append

  def remove(self, hand_on: bool):
    for name in NOISY_LOGGERS:
      logging.getLogger(name).removeFilter(self)
    if sys.unraisablehook == self.unraisables.append:
      sys.unraisablehook = self.previous_hook
    if hand_on:
      for record in self.records:
        logging.getLogger(record.name).handle(record)
      for info in self.unraisables:
        self.previous_hook(info)
    self.records, self.unraisables = [], []


@contextlib.contextmanager
def _orbax_noise_held():
  """Orbax logs every failure of its writer and reader threads with a traceback, then raises the
  same error in the caller. The noise is held back during a save or restore and handed on when
  the operation succeeds or fails for a reason we do not report ourselves; after a failure that
  reaches the user as one line it is dropped for a few seconds more (Orbax's threads go on
  failing for a moment, while the process ends)."""
  noise = _OrbaxNoise()
  noise.install()
  try:
    yield noise
  except JaxsegError:
    timer = threading.Timer(10.0, noise.remove, kwargs={'hand_on': False})
    timer.daemon = True
    timer.start()
    raise
  except BaseException:
    noise.remove(hand_on=True)
    raise
  noise.remove(hand_on=True)
