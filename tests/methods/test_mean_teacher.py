"""The mean teacher (jaxseg/methods/mean_teacher.py): the SSL4MIS EMA rule, the teacher's input
noise, the consistency weight, and its schedules scaled by the one rule."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg import config as config_lib
from jaxseg.methods import mean_teacher
from jaxseg.methods.term import StepOutputs, Unlabeled


def _config(**kw):
  c = ml_collections.ConfigDict({'ema': {'rule': 'ssl4mis', 'decay': 0.99}})
  c.ema.update(kw)
  return c


def test_ssl4mis_ema_rule():
  # alpha = min(1 - 1/(t+1), 0.99): 0 at the first step (teacher = student), 0.5, 2/3, ...
  steps = jnp.array([0, 1, 2, 99, 1000])
  np.testing.assert_allclose(mean_teacher.ema_decay(steps, _config()),
                             [0.0, 0.5, 2 / 3, 0.99, 0.99], rtol=1e-6)
  fixed = _config(rule='fixed', decay=0.999)
  np.testing.assert_allclose(mean_teacher.ema_decay(jnp.array(5), fixed), 0.999, rtol=1e-6)


def test_teacher_input_is_the_weak_view_plus_clipped_noise():
  config = config_lib.base_config(losses=('supervised', 'mean_teacher'))
  weak = jnp.zeros((64, 8, 8))
  unlabeled = Unlabeled(image_weak=weak, image_strong=weak + 1.0)
  rng = jax.random.PRNGKey(3)
  noisy = np.asarray(mean_teacher.teacher_input(unlabeled, rng, config))
  # SSL4MIS: clip(0.1 * N(0, 1), -0.2, 0.2) added to the weak view, drawn from `rng`.
  expected = np.clip(0.1 * np.asarray(jax.random.normal(rng, weak.shape)), -0.2, 0.2)
  np.testing.assert_allclose(noisy, expected, rtol=1e-6)
  assert noisy.max() == 0.2 and noisy.min() == -0.2  # the clip binds on 4096 draws
  config.mean_teacher.teacher_noise = 0.0
  np.testing.assert_array_equal(mean_teacher.teacher_input(unlabeled, rng, config), weak)


def test_scale_schedules_scales_the_ramp_start_and_ema_horizon():
  config = config_lib.base_config(losses=('supervised', 'mean_teacher'))
  mean_teacher.scale_schedules(config, 0.05, ema=True)
  assert (config.mean_teacher.rampup_length, config.mean_teacher.rampup_interval,
          config.mean_teacher.start_step) == (1500, 7, 50)
  # horizon 1/(1-0.99) = 100 steps x 0.05 = 5 < 20: kept at MIN_EMA_HORIZON.
  np.testing.assert_allclose(config.ema.decay, 1 - 1 / mean_teacher.MIN_EMA_HORIZON)
  kept = config_lib.base_config(losses=('supervised', 'mean_teacher'))
  mean_teacher.scale_schedules(kept, 0.5, ema=False)
  assert kept.ema.decay == 0.99 and kept.mean_teacher.start_step == 500


def test_consistency_weight_ramps_and_starts_at_start_step():
  config = config_lib.base_config(losses=('supervised', 'mean_teacher'))
  config.mean_teacher.update(weight=0.1, rampup_length=100, rampup_interval=1, start_step=10)
  logits = jnp.zeros((1, 2, 2, 3))
  teacher = {'logits': logits.at[..., 0].set(2.0)}
  for step, expected_weight in ((9, 0.0), (10, 0.1 * np.exp(-5 * 0.9 ** 2)), (100, 0.1)):
    out = StepOutputs(labeled=None, unlabeled=None, student_labeled=None,
                      student_unlabeled={'logits': logits}, teacher_unlabeled=teacher,
                      step=jnp.asarray(step))
    value, metrics = mean_teacher.mean_teacher(out, config)
    np.testing.assert_allclose(metrics['consistency_weight'], expected_weight, rtol=1e-6)
    np.testing.assert_allclose(value, expected_weight * metrics['consistency'], rtol=1e-6)
  assert float(metrics['consistency']) > 0
