"""The one train step: compiled once, teacher by EMA, ramps without recompiling, resume, NaN stop,
every experiment runs, and 1 vs 8 devices agree."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import KilledAfter, tiny_config, train_setup
from jaxseg import config as config_lib
from jaxseg.data import pipeline
from jaxseg.errors import TrainingDiverged
from jaxseg.models import build_model
from jaxseg.training import loop, objectives, step as step_lib
from jaxseg.training.logging import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_model_outputs_and_pure_apply():
  config = tiny_config('smoke')
  model = build_model(config)
  x = jnp.ones((2, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x, train=False)
  chex.assert_shape(out['logits'], (2, 32, 32, 4))
  chex.assert_shape(out['decoder_features'], (2, 32, 32, 4))
  chex.assert_shape(out['bottleneck'], (2, 8, 8, 16))
  again = model.apply(variables, x, train=False)
  chex.assert_trees_all_equal(out, again)  # a pure function of (variables, input)
  with config.unlocked():
    config.model.norm = 'group'
  gn = build_model(config)
  gv = gn.init(jax.random.PRNGKey(0), x)
  assert 'batch_stats' not in gv
  chex.assert_shape(gn.apply(gv, x)['logits'], (2, 32, 32, 4))


def _ssl4mis_unet_parameter_count(channels=(16, 32, 64, 128, 256), classes=4):
  """Counted from SSL4MIS networks/unet.py's layer list (PyTorch convs have biases)."""
  conv = lambda i, o, k=3: i * o * k * k + o
  block = lambda i, o: conv(i, o) + 2 * o + conv(o, o) + 2 * o  # conv-BN-conv-BN
  n = block(1, channels[0]) + sum(block(a, b) for a, b in zip(channels, channels[1:]))
  for low, high in zip(channels, channels[1:]):  # UpBlock: 1x1 conv, then ConvBlock on the concat
    n += conv(high, low, 1) + block(2 * low, low)
  return n + conv(channels[0], classes)


def test_default_unet_matches_ssl4mis_size():
  config = config_lib.base_config()
  model = build_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1))))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params']))
  assert count == _ssl4mis_unet_parameter_count() == 1_813_764


def test_step_compiles_once_learns_and_updates_teacher_by_ema():
  config = tiny_config('smoke')
  with config.unlocked():
    config.ema.update(rule='fixed', decay=0.9)
    config.optimizer.update(name='adam', lr=3e-3, schedule='constant', weight_decay=0.0)
  _, jitted, state, batches, mesh = train_setup(config)
  labeled, unlabeled = (step_lib.shard_batch(b, mesh) for b in next(batches))
  losses = []
  for _ in range(12):  # the same batch: the loss must fall
    before_teacher = jax.tree.map(np.asarray, state.teacher_params)
    state, metrics = jitted(state, labeled, unlabeled)
    losses.append(float(metrics['supervised']))
  assert jitted._cache_size() == 1, 'the step recompiled'
  assert losses[-1] < 0.8 * losses[0], losses
  # teacher_{t+1} = 0.9 * teacher_t + 0.1 * student_{t+1}.
  expected = jax.tree.map(lambda t, s: 0.9 * t + 0.1 * np.asarray(s), before_teacher,
                          state.params)
  chex.assert_trees_all_close(state.teacher_params, expected, rtol=1e-5, atol=1e-6)
  assert int(state.step) == 12


def test_consistency_switches_on_at_start_step_without_recompiling():
  config = tiny_config('smoke')
  with config.unlocked():
    config.mean_teacher.update(start_step=3, rampup_length=0)
  _, jitted, state, batches, mesh = train_setup(config)
  weights = []
  for _ in range(5):
    labeled, unlabeled = (step_lib.shard_batch(b, mesh) for b in next(batches))
    state, metrics = jitted(state, labeled, unlabeled)
    weights.append(float(metrics['consistency_weight']))
  np.testing.assert_allclose(weights, [0, 0, 0, 0.1, 0.1], rtol=1e-6)
  assert jitted._cache_size() == 1


def test_supervised_step_ignores_unlabeled_stream():
  config = tiny_config('acdc_supervised')
  _, jitted, state, batches, mesh = train_setup(config)
  labeled, unlabeled = next(batches)
  assert unlabeled is None
  state, metrics = jitted(state, step_lib.shard_batch(labeled, mesh), None)
  assert 'consistency' not in metrics and np.isfinite(metrics['loss'])


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


@pytest.mark.parametrize('experiment', config_lib.list_experiments())
def test_every_paper_profile_resolves(experiment):
  """The paper profile of every experiment names known terms, stages and a buildable model."""
  config = config_lib.load_experiment(experiment, 'paper')
  for name in config.stage_order or ('',):
    stage = config_lib.stage_config(config, name) if name else config
    objectives.resolve(tuple(stage.losses))
  assert config_lib.total_steps(config) > 0
  build_model(config)


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


@objectives.register('test_nan_from_step_4')
def _nan_from_step_4(out, config):
  del config
  value = jnp.where(out.step >= 3, jnp.nan, 0.0)  # the 4th step (step counter 3) is NaN
  return value, {}


def _nan_config(**settings):
  config = tiny_config('smoke')
  with config.unlocked():
    config.losses = ('supervised', 'test_nan_from_step_4')
    config.eval.every = 100
    config.update(settings)
  return config


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
  # Metrics are fetched every 5 steps and before each checkpoint (every 2): the NaN of step 4 is
  # found at step 4's fetch, before its checkpoint would be saved, and named by its own step.
  config = _nan_config(log_every=5)
  with config.unlocked():
    config.checkpoint.every = 2
  workdir = str(tmp_path / 'run')
  with pytest.raises(TrainingDiverged, match=r'loss became nan at step 4 \(last finite loss '
                     r'[0-9.]+ at step 3\).*latest checkpoint, step 2 \(loss [0-9.]+\), is kept: '
                     r'its loss was finite'):
    loop.train_and_evaluate(config, workdir, progress=False)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', 'latest'))) == ['2']
  # The bad step is logged (its loss as null) for diagnosis.
  assert [(m['step'], m['loss']) for m in read_metrics(workdir)][-1] == (4, None)


def test_nan_before_the_first_checkpoint_keeps_config_and_logs(tmp_path):
  config = _nan_config(log_every=1)
  with config.unlocked():
    config.checkpoint.every = 10
  workdir = str(tmp_path / 'run')
  with pytest.raises(TrainingDiverged, match=r'at step 4 \(last finite loss [0-9.]+ at step 3\).*'
                     r'no checkpoint was saved yet; the config and logs'):
    loop.train_and_evaluate(config, workdir, progress=False)
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


MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from conftest import tiny_config, train_setup
    from jaxseg.training import step as step_lib
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config('smoke')
    with config.unlocked():
      config.data.update(labeled_batch=8, unlabeled_batch=8)
    losses = {{}}
    for n in (1, 8):
      _, jitted, state, batches, mesh = train_setup(config, n)
      losses[n] = []
      for _ in range(4):
        labeled, unlabeled = next(batches)
        sharded = step_lib.shard_batch(labeled, mesh)
        assert len(sharded['image'].sharding.device_set) == n
        state, metrics = jitted(state, sharded, step_lib.shard_batch(unlabeled, mesh))
        losses[n].append([float(metrics[k]) for k in ('loss', 'supervised', 'consistency')])
    print(json.dumps(losses))
''')


def test_one_and_eight_devices_give_the_same_losses():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=REPO)
  script = MULTI_DEVICE_SCRIPT.format(tests=os.path.join(REPO, 'tests'))
  out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  losses = json.loads(out.stdout.strip().splitlines()[-1])
  one, eight = np.array(losses['1']), np.array(losses['8'])
  assert np.all(np.isfinite(one)) and one[-1, 0] != one[0, 0]
  np.testing.assert_allclose(eight, one, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize('embedding,assign', [('patches', 'per_class'), ('regions', 'dominant')])
def test_plgcl_switches_on_after_warmup_without_recompiling(embedding, assign):
  config = tiny_config('acdc_plgcl')
  with config.unlocked():
    config.plgcl.update(warmup_steps=2, patch=8, num_pos=3, embedding=embedding, assign=assign,
                        patches_per_class=8, detach_keys=assign == 'per_class')
    config.model.projection_dim = 16
  _, jitted, state, batches, mesh = train_setup(config)
  weights, losses = [], []
  for _ in range(4):
    labeled, unlabeled = (step_lib.shard_batch(b, mesh) for b in next(batches))
    state, metrics = jitted(state, labeled, unlabeled)
    weights.append(float(metrics['plgcl_weight']))
    losses.append(float(metrics['plgcl']))
    assert 0.0 < float(metrics['plgcl_background_keys']) < 1.0
  np.testing.assert_allclose(weights, [0, 0, 0.2, 0.2], rtol=1e-6)
  assert np.all(np.isfinite(losses)) and min(losses) > 0
  assert jitted._cache_size() == 1


def test_plgcl_refuses_regions_with_per_class_keys():
  from jaxseg.errors import ConfigError
  from jaxseg.methods.plgcl import check_config
  config = tiny_config('acdc_plgcl')
  with config.unlocked():
    config.plgcl.update(embedding='regions', assign='per_class')
  with pytest.raises(ConfigError, match='plgcl.embedding=regions'):
    check_config(config.plgcl)
  config.plgcl.assign = 'majority'
  with pytest.raises(ConfigError, match='plgcl.assign'):
    check_config(config.plgcl)


def test_pool_regions_matches_patch_means():
  from jaxseg.methods.plgcl import pool_regions
  bottleneck = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  # image 64, bottleneck 4x4 (stride 16), patch 32 -> 2x2 cells per patch, 4 patches per image.
  pooled = pool_regions(bottleneck, 64, 32)
  chex.assert_shape(pooled, (2, 4, 3))
  np.testing.assert_allclose(pooled[1, 2], bottleneck[1, 2:4, 0:2].mean(axis=(0, 1)))
  from jaxseg.errors import ConfigError
  with pytest.raises(ConfigError, match='multiple of the encoder stride'):
    pool_regions(bottleneck, 64, 24)
