"""`jaxseg.training.runs`: a finished run opens from its directory at its best, last or a given
checkpoint, through a real forward of its model; Orbax's managers are closed whether the restore
worked or not; a folder that is not a run is one line naming what is missing."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxseg.errors import DataError, JaxsegError, StorageError
from jaxseg.training import checkpoint, runs

from conftest import save_run, tiny_config


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """(workdir, {step: state}): best at step 2, latest at steps 3 and 4 (no training)."""
  workdir = tmp_path_factory.mktemp('runs') / 'run'
  states = save_run(workdir, tiny_config(), {'best': (2,), 'latest': (3, 4)})
  return workdir, states


@pytest.mark.parametrize('name, step', [('best', 2), ('last', 4), ('latest', 4), ('3', 3), (2, 2)])
def test_best_last_and_a_step_restore_what_was_saved(saved, name, step):
  workdir, states = saved
  run = runs.open_run(str(workdir), name)
  assert run.step == step and run.meta['step'] == step and int(run.state.step) == step
  jax.tree.map(np.testing.assert_array_equal, run.variables['params'], states[step].params)
  # The forward pass is the restored model's own, in evaluation mode.
  x = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
  expected = run.model.apply({'params': states[step].params,
                              'batch_stats': states[step].batch_stats}, x, train=False)['logits']
  np.testing.assert_allclose(np.asarray(run.logits_fn(x)), np.asarray(expected), rtol=1e-5,
                             atol=1e-5)


def test_best_and_last_are_different_checkpoints(saved):
  workdir, _ = saved
  x = np.random.default_rng(1).random((1, 32, 32, 1), np.float32)
  best, last = runs.open_run(str(workdir), 'best'), runs.open_run(str(workdir), 'last')
  assert not np.allclose(np.asarray(best.logits_fn(x)), np.asarray(last.logits_fn(x)))


def test_saved_steps(saved, tmp_path):
  workdir, _ = saved
  assert runs.saved_steps(str(workdir), 'best') == [2]
  assert runs.saved_steps(str(workdir), 'last') == runs.saved_steps(str(workdir)) == [3, 4]
  assert runs.saved_steps(str(tmp_path / 'not_started'), 'latest') == []


@pytest.fixture
def closes(monkeypatch):
  """Counts Checkpoints.close calls."""
  count = []
  close = checkpoint.Checkpoints.close
  monkeypatch.setattr(checkpoint.Checkpoints, 'close', lambda self: (count.append(1), close(self)))
  return count


def test_checkpoints_are_closed_after_a_restore_and_after_a_failed_one(saved, closes):
  workdir, _ = saved
  runs.open_run(str(workdir), 'best')
  assert len(closes) == 1
  with pytest.raises(DataError, match=r'no checkpoint at step 7 \(saved steps: 2, 3, 4\)'):
    runs.open_run(str(workdir), 7)
  assert len(closes) == 2
  with pytest.raises(JaxsegError, match="--checkpoint 'first': expected best, last or a step"):
    runs.open_run(str(workdir), 'first')
  assert len(closes) == 3


def test_a_folder_that_is_not_a_run_is_named(tmp_path, closes):
  (tmp_path / 'notes.txt').write_text('not a run')
  with pytest.raises(DataError) as error:
    runs.open_run(str(tmp_path))
  assert str(error.value) == (f'{tmp_path / "config.json"}: missing; {tmp_path} is not a jaxseg '
                              'run directory')
  # A config without checkpoints (moved or deleted): the folder is named, nothing is created.
  save_run(tmp_path / 'run', tiny_config(), {})
  (tmp_path / 'run' / 'checkpoints').rename(tmp_path / 'elsewhere')
  closes.clear()  # save_run's own
  with pytest.raises(StorageError, match=r'run/checkpoints: missing \(moved or deleted\?\)'):
    runs.open_run(str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists() and not closes  # none was opened
