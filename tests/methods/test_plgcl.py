"""The `plgcl` term (jaxseg/methods/plgcl.py) in the train step: the warm-up switches it on without
recompiling; config checks; region pooling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config, train_setup
from jaxseg.errors import ConfigError
from jaxseg.methods.plgcl import check_config, pool_regions
from jaxseg.training import step as step_lib


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
  config = tiny_config('acdc_plgcl')
  with config.unlocked():
    config.plgcl.update(embedding='regions', assign='per_class')
  with pytest.raises(ConfigError, match='plgcl.embedding=regions'):
    check_config(config.plgcl)
  config.plgcl.assign = 'majority'
  with pytest.raises(ConfigError, match='plgcl.assign'):
    check_config(config.plgcl)


def test_pool_regions_matches_patch_means():
  bottleneck = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  # image 64, bottleneck 4x4 (stride 16), patch 32 -> 2x2 cells per patch, 4 patches per image.
  pooled = pool_regions(bottleneck, 64, 32)
  chex.assert_shape(pooled, (2, 4, 3))
  np.testing.assert_allclose(pooled[1, 2], bottleneck[1, 2:4, 0:2].mean(axis=(0, 1)))
  with pytest.raises(ConfigError, match='multiple of the encoder stride'):
    pool_regions(bottleneck, 64, 24)


def test_patch_pass_leaves_the_running_statistics_to_whole_images():
  # The attended patches go through the encoder with their own batch statistics, but evaluation
  # normalizes whole images: the running averages must come from the whole-image forward alone
  # (a PyTorch encoder called on the patches in train mode would fold them in).
  def one_step(losses):
    config = tiny_config('acdc_plgcl')
    with config.unlocked():
      config.losses = losses
      config.plgcl.update(warmup_steps=0, patch=8, num_pos=3, patches_per_class=8)
    _, jitted, state, batches, mesh = train_setup(config)
    labeled, unlabeled = (step_lib.shard_batch(b, mesh) for b in next(batches))
    before = jax.device_get(state.batch_stats)  # the step donates the state's buffers
    new_state, metrics = jitted(state, labeled, unlabeled)
    return before, new_state, metrics

  before, with_patches, metrics = one_step(('supervised', 'mean_teacher', 'plgcl'))
  _, without, _ = one_step(('supervised', 'mean_teacher'))
  assert float(metrics['plgcl_weight']) > 0 and float(metrics['plgcl']) > 0
  chex.assert_trees_all_close(with_patches.batch_stats, without.batch_stats, rtol=1e-6)
  # ... and the step did update them (the comparison is not between two unchanged trees).
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, with_patches.batch_stats)
  assert all(jax.tree.leaves(changed))
