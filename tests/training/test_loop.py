"""The training loop (jaxseg/training/loop.py): every experiment runs at tiny size, a resume gives
the same next losses, a NaN stops training and keeps the last good checkpoint, metrics are fetched
every log_every steps."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import KilledAfter, tiny_config
from jaxseg import config as config_lib, methods
from jaxseg.data import pipeline
from jaxseg.errors import TrainingDiverged
from jaxseg.methods.term import LossTerm
from jaxseg.training import checkpoint, loop
from jaxseg.training.logging import read_metrics


def _distinct_tiny_experiments() -> list[tuple[str, ...]]:
  """Experiments grouped by their tiny config: several experiments differ only in their paper
  profile (e.g. Hu et al. on ACDC, Hippocampus and MM-WHS share one CPU profile), and one run
  covers a group. Every experiment's paper profile is checked separately below."""
  groups = {}
  for name in config_lib.list_experiments():
    config = tiny_config(name)
    with config.unlocked():
      config.experiment = ''
    groups.setdefault(config_lib.to_json(config), []).append(name)
  return [tuple(names) for names in groups.values()]


@pytest.mark.parametrize('experiments', _distinct_tiny_experiments(), ids='+'.join)
def test_every_experiment_runs_at_tiny_size(experiments, tmp_path):
  config = tiny_config(experiments[0])
  with config.unlocked():
    config.steps = 2
  results = loop.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  assert set(results['splits']) >= {'val'}
  dice = results['splits']['val']['summary']['dice']['mean']
  assert dice.shape == (config.num_classes - 1,) and np.all((dice >= 0) & (dice <= 1))
  assert (tmp_path / 'run' / 'results.md').exists()


def test_resume_gives_the_same_next_losses(tmp_path, monkeypatch):
  config = tiny_config('smoke')
  with config.unlocked():
    config.steps = 6
    config.checkpoint.every = 3
  loop.train_and_evaluate(config, str(tmp_path / 'straight'), progress=False)
  straight = {m['step']: m['loss'] for m in read_metrics(str(tmp_path / 'straight'))
              if m['split'] == 'train'}

  make_iterator = pipeline.make_train_iterator
  with monkeypatch.context() as patch:
    patch.setattr(pipeline, 'make_train_iterator',
                  lambda *a, **k: KilledAfter(make_iterator(*a, **k), 4))
    with pytest.raises(KeyboardInterrupt):  # killed during step 5, after the checkpoint at 3
      loop.train_and_evaluate(config, str(tmp_path / 'resumed'), progress=False)
  with open(tmp_path / 'resumed' / 'checkpoints' / 'latest' / '3' / 'meta' / 'metadata') as f:
    wall_at_3 = json.load(f)['wall_seconds']
  results = loop.train_and_evaluate(config, str(tmp_path / 'resumed'), resume=True,
                                    progress=False)
  assert results['resumed_from'] == 3
  # The run's training time counts the sitting before the kill (up to its checkpoint) too.
  assert 0 < wall_at_3 < results['train_wall_seconds']
  resumed = {m['step']: m['loss'] for m in read_metrics(str(tmp_path / 'resumed'))
             if m['split'] == 'train'}
  assert sorted(resumed) == sorted(straight) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([resumed[s] for s in (4, 5, 6)], [straight[s] for s in (4, 5, 6)],
                             rtol=1e-6)


def _nan_from_step_4(out, config):
  del config
  value = jnp.where(out.step >= 3, jnp.nan, 0.0)  # the 4th step (step counter 3) is NaN
  return value, {}


@pytest.fixture
def nan_term(monkeypatch):
  """A term whose loss is NaN from the 4th step, in the table for one test."""
  monkeypatch.setitem(methods.TERMS, 'test_nan_from_step_4',
                      LossTerm('test_nan_from_step_4', _nan_from_step_4, dict))


def _diverged_run(tmp_path, match: str, *, log_every: int, checkpoint_every: int) -> str:
  """Trains smoke with a loss that turns NaN at step 4; asserts the divergence error matches
  `match` and returns the run directory."""
  config = tiny_config('smoke')
  with config.unlocked():
    config.losses = ('supervised', 'test_nan_from_step_4')
    config.eval.every = 100
    config.log_every = log_every
    config.checkpoint.every = checkpoint_every
  workdir = str(tmp_path / 'run')
  with pytest.raises(TrainingDiverged, match=match):
    loop.train_and_evaluate(config, workdir, progress=False)
  return workdir


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path, nan_term, monkeypatch):
  closed = []
  real_close = checkpoint.Checkpoints.close
  monkeypatch.setattr(checkpoint.Checkpoints, 'close',
                      lambda self: (closed.append(self), real_close(self)))
  # Metrics are fetched every 5 steps and before each checkpoint (every 2): the NaN of step 4 is
  # found at step 4's fetch, before its checkpoint would be saved, and named by its own step.
  workdir = _diverged_run(
      tmp_path, r'loss became nan at step 4 \(last finite loss [0-9.]+ at step 3\).*latest '
      r'checkpoint, step 2 \(loss [0-9.]+\), is kept: its loss was finite', log_every=5,
      checkpoint_every=2)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', 'latest'))) == ['2']
  # The bad step is logged (its loss as null) for diagnosis.
  assert [(m['step'], m['loss']) for m in read_metrics(workdir)][-1] == (4, None)
  # The run's checkpoints were closed on the way out (Orbax's writes finished).
  assert len(closed) == 1


def test_nan_before_the_first_checkpoint_keeps_config_and_logs(tmp_path, nan_term):
  workdir = _diverged_run(
      tmp_path, r'at step 4 \(last finite loss [0-9.]+ at step 3\).*no checkpoint was saved '
      r'yet; the config and logs', log_every=1, checkpoint_every=10)
  assert os.path.isfile(os.path.join(workdir, 'config.json'))
  assert [m['step'] for m in read_metrics(workdir)] == [1, 2, 3, 4]


def test_metrics_are_fetched_every_log_every_steps_not_every_step(tmp_path, monkeypatch):
  """The host waits on the device only at fetches: every log_every steps, and before
  validations, checkpoints and the last step; steps in between are logged from those fetches."""
  config = tiny_config('smoke')
  with config.unlocked():
    config.steps, config.log_every, config.eval.every = 7, 3, 100
    config.checkpoint.every = 5
  fetches = []
  device_get = jax.device_get

  def counted(tree):
    if isinstance(tree, list):  # the loop's [(step, metrics), ...]
      fetches.append([step for step, _ in tree])
    return device_get(tree)

  monkeypatch.setattr(jax, 'device_get', counted)
  loop.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  assert fetches == [[1, 2, 3], [4, 5], [6], [7]]
  logged = [m['step'] for m in read_metrics(str(tmp_path / 'run')) if m['split'] == 'train']
  assert logged == [3, 6, 7]
