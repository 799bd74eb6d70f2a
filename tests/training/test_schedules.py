"""Learning-rate schedules, optimizers and loss-weight ramps (jaxseg/training/schedules.py)."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.errors import ConfigError
from jaxseg.training import schedules


def test_sigmoid_rampup_matches_ssl4mis():
  # SSL4MIS: sigmoid_rampup(iter // 150, 200.0) = exp(-5 (1 - clip(e / 200))^2).
  for it in (0, 149, 150, 7_500, 29_999, 30_000, 50_000):
    e = min(it // 150, 200) / 200
    np.testing.assert_allclose(schedules.sigmoid_rampup(it, 30_000, 150),
                               np.exp(-5 * (1 - e)**2), rtol=1e-6)


def test_poly_learning_rate_matches_ssl4mis():
  c = ml_collections.ConfigDict(dict(steps=100, optimizer=dict(
      schedule='poly', lr=0.01, poly_power=0.9)))
  lr = schedules.learning_rate(c)
  for t in (0, 10, 50, 99):
    np.testing.assert_allclose(lr(t), 0.01 * (1 - t / 100)**0.9, rtol=1e-5)


def test_unknown_optimizer_is_a_config_error():
  c = ml_collections.ConfigDict(dict(steps=10, optimizer=dict(
      name='lion', schedule='constant', lr=0.1, weight_decay=0.0)))
  with pytest.raises(ConfigError, match='lion'):
    schedules.optimizer(c)


def test_step_learning_rate_of_ua_mt_and_mcf():
  config = config_lib.base_config()
  config.optimizer.schedule = 'step'
  lr = jax.jit(schedules.learning_rate(config))
  got = [float(lr(s)) for s in (0, 2499, 2500, 4999, 5000, 5999)]
  np.testing.assert_allclose(got, [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-5)
  config.optimizer.decay_every = 0
  with pytest.raises(ConfigError):
    schedules.learning_rate(config)
