"""Multi-stage runs: stage configs, hand-over of parameters, pseudo-labels, logs and resume."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.errors import ConfigError
from jaxseg.training import loop, runs
from jaxseg.training.logging import read_metrics
from conftest import KilledAfter, snapshot, tiny_config


def two_stage_config():
  """Stage 'first' (supervised, no validation) hands over to 'second' (supervised, lr 0), which
  trains on pseudo-labels: with lr 0 its parameters must stay the first stage's last ones."""
  config = tiny_config('acdc_supervised')
  with config.unlocked():
    config.optimizer.update(name='adam', schedule='constant', lr=1e-3, weight_decay=0.0)
    config.stage_order = ('first', 'second')
    config.stages = ml_collections.ConfigDict({
        'first': {'steps': 3, 'eval': {'every': 0}},
        'second': {'steps': 2, 'optimizer': {'lr': 0.0},
                   'losses': ('supervised', 'mean_teacher'),
                   'stage': {'pseudo_labels': True}},
    })
  return config


def test_stage_config_merges_partial_configs_and_refuses_fixed_keys():
  config = two_stage_config()
  second = config_lib.stage_config(config, 'second')
  assert second.steps == 2 and second.optimizer.lr == 0.0 and second.optimizer.name == 'adam'
  assert second.stage.pseudo_labels and second.stage.name == 'second' and not second.stage_order
  assert config_lib.final_stage_config(config).stage.name == 'second'
  with config.unlocked():
    config.stages.first.model = ml_collections.ConfigDict({'norm': 'group'})
  with pytest.raises(ConfigError, match='stages.first: may not change model'):
    config_lib.stage_config(config, 'first')
  with config.unlocked():
    del config.stages.first['model']
    config.stages.first.optimizer = ml_collections.ConfigDict({'learning_rate': 1.0})
  with pytest.raises(ConfigError, match='stages.first.optimizer.learning_rate: unknown'):
    config_lib.stage_config(config, 'first')
  with config.unlocked():
    config.stage_order = ('first', 'third')
  with pytest.raises(ConfigError, match="'third'"):
    config_lib.stage_config(config, 'third')


def test_two_stages_chain_log_and_resume(tmp_path):
  config = two_stage_config()
  workdir = str(tmp_path / 'run')
  results = loop.train_and_evaluate(config, workdir, progress=False)

  first_dir = os.path.join(workdir, 'stages', '01_first')
  assert os.path.isfile(os.path.join(first_dir, 'results.json'))
  assert results['stages'] == [{'name': 'first', 'start_step': 0, 'end_step': 3},
                               {'name': 'second', 'start_step': 3, 'end_step': 5}]
  with open(os.path.join(workdir, 'stages.json')) as f:
    assert json.load(f) == results['stages']
  assert results['steps'] == 5 and len(results['stage_wall_seconds']) == 2
  assert results['train_wall_seconds'] == pytest.approx(sum(results['stage_wall_seconds']))
  # One log, steps counted from the start of the run, each stage's own loss terms.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    train = [json.loads(l) for l in f if '"train"' in l]
  assert [r['step'] for r in train] == [1, 2, 3, 4, 5]
  assert 'consistency' not in train[2] and 'consistency' in train[3]

  # Pseudo-labels: one per unlabeled slice, at its size, with values in range.
  with np.load(os.path.join(workdir, 'pseudo_labels.npz')) as saved:
    labels = [saved[k] for k in saved.files]
  data = loop.datasets.load_data(config_lib.stage_config(config, 'second'))
  assert len(labels) == len(data.unlabeled)
  assert labels[0].shape == data.unlabeled[0]['image'].shape
  assert all(l.max() < config.num_classes for l in labels)

  # Hand-over: the second stage (lr 0) ends with the first stage's last parameters.
  first = config_lib.stage_config(config, 'first')
  first_state = runs.open_run(first_dir, 'last', config=first).state
  final = runs.open_run(workdir, 'last')  # its config.json resolves to the final stage
  assert final.config.stage.name == 'second'
  jax.tree.map(np.testing.assert_array_equal, first_state.params, final.state.params)
  assert int(final.state.step) == 2

  # Resuming a finished run trains nothing and keeps the log.
  again = loop.train_and_evaluate(config, workdir, resume=True, progress=False)
  assert again['stages'] == results['stages']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert sum('"train"' in l for l in f) == 5


def test_previous_best_needs_a_validated_stage(tmp_path):
  config = two_stage_config()
  with config.unlocked():
    config.stages.second.stage.init = 'previous_best'
  with pytest.raises(ConfigError, match='kept no best checkpoint'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  # The first stage had finished: its directory is kept for a fixed-config resume.
  assert os.path.isfile(str(tmp_path / 'run' / 'stages' / '01_first' / 'results.json'))


def test_staged_resume_mid_stage_then_finished_untouched_then_extended(tmp_path, monkeypatch):
  config = two_stage_config()
  with config.unlocked():
    config.stages.second.steps = 3
    config.stages.second.checkpoint = {'every': 1}
  workdir = tmp_path / 'run'
  make_iterator = loop.pipeline.make_train_iterator
  built = []

  def stopping(*args, **kwargs):
    built.append(1)
    iterator = make_iterator(*args, **kwargs)
    return KilledAfter(iterator, 2) if len(built) == 2 else iterator  # in the second stage

  with monkeypatch.context() as patch:
    patch.setattr(loop.pipeline, 'make_train_iterator', stopping)
    with pytest.raises(KeyboardInterrupt):
      loop.train_and_evaluate(config, str(workdir), progress=False)
  assert sorted(os.listdir(workdir / 'checkpoints' / 'latest')) == ['1']
  first = workdir / 'stages' / '01_first'
  first_before = snapshot(first)

  # The second stage continues from its checkpoint; the first is not trained again.
  results = loop.train_and_evaluate(config, str(workdir), resume=True, progress=False)
  assert results['steps'] == 6
  train = [m['step'] for m in read_metrics(str(workdir)) if m['split'] == 'train']
  assert train == [1, 2, 3, 4, 5, 6]
  assert snapshot(first) == first_before

  # Finished: reported, nothing rewritten.
  before = snapshot(workdir)
  again = loop.train_and_evaluate(config, str(workdir), resume=True, progress=False)
  assert again['steps'] == 6 and snapshot(workdir) == before

  # --steps extends the final stage only.
  longer = loop.train_and_evaluate(config, str(workdir), resume=True, progress=False, steps=8)
  assert longer['stages'] == [{'name': 'first', 'start_step': 0, 'end_step': 3},
                              {'name': 'second', 'start_step': 3, 'end_step': 8}]
  train = [m['step'] for m in read_metrics(str(workdir)) if m['split'] == 'train']
  assert train == list(range(1, 9))
  assert snapshot(first) == first_before
