"""Mean teacher (Tarvainen & Valpola 2017) in the SSL4MIS form: the `mean_teacher` term and its
EMA teacher.

The term asks the step for a teacher (`TERM.teacher`): a copy of the student whose parameters
follow the student's by an exponential moving average after every update (the step applies
`optax.incremental_update` with this term's `ema_decay`), and whose input is the weak view plus
clipped Gaussian noise (`teacher_input`, SSL4MIS). Only a run with this term keeps a teacher in
its state.

Consistency: the student's outputs on the strong view against the teacher's, weighted by a
sigmoid ramp-up and off before `start_step` (a traced weight: no recompilation when it starts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import segmentation
from jaxseg.methods.term import LossTerm, StepOutputs, Teacher, Unlabeled
from jaxseg.training import schedules

# An EMA teacher averages over ~1/(1-alpha) steps; scaled down with the budget it would become
# the student itself, so its horizon is kept at least this long.
MIN_EMA_HORIZON = 20


def blocks() -> dict[str, ml_collections.ConfigDict]:
  return {
      'mean_teacher': ml_collections.ConfigDict(dict(
          consistency='mse',  # 'mse' of softmax (SSL4MIS), 'ce' soft or 'ce_hard' (PLGCL eq. 6)
          weight=0.1,
          rampup_length=30_000,  # steps; SSL4MIS: 200 'epochs' of 150 iterations
          rampup_interval=150,  # SSL4MIS advances the ramp every 150 iterations
          start_step=1_000,  # SSL4MIS: no consistency at all before iteration 1,000
          teacher_noise=0.1,  # SSL4MIS: teacher input + clip(N(0, 0.1), -0.2, 0.2)
          teacher_noise_clip=0.2,
      )),
      'ema': ml_collections.ConfigDict(dict(rule='ssl4mis', decay=0.99)),  # or rule='fixed'
  }


def scale_schedules(config, factor: float, ema: bool) -> None:
  """The consistency ramp and start, and with `ema` the teacher's horizon 1/(1-alpha) (at least
  MIN_EMA_HORIZON steps), times `factor`."""
  mt = config.mean_teacher
  mt.rampup_length = int(mt.rampup_length * factor)
  mt.rampup_interval = max(1, int(mt.rampup_interval * factor))
  mt.start_step = int(mt.start_step * factor)
  if ema:
    horizon = max(MIN_EMA_HORIZON, factor / (1.0 - config.ema.decay))
    config.ema.decay = 1.0 - 1.0 / horizon


def teacher_input(unlabeled: Unlabeled, rng, config) -> jax.Array:
  """The weak view plus clip(N(0, teacher_noise), -clip, clip) (SSL4MIS); no noise at 0."""
  mt = config.mean_teacher
  images = unlabeled.image_weak
  if mt.teacher_noise > 0:
    noise = jnp.clip(mt.teacher_noise * jax.random.normal(rng, images.shape),
                     -mt.teacher_noise_clip, mt.teacher_noise_clip)
    images = images + noise
  return images


def ema_decay(step, config):
  """SSL4MIS: alpha = min(1 - 1/(t+1), decay), so early teachers follow the student closely."""
  e = config.ema
  if e.rule == 'ssl4mis':
    return jnp.minimum(1.0 - 1.0 / (step + 1.0), e.decay)
  if e.rule == 'fixed':
    return jnp.asarray(e.decay, jnp.float32)
  raise ConfigError(f'ema.rule: unknown rule {e.rule!r}; known: ssl4mis, fixed')


def mean_teacher(out: StepOutputs, config):
  m = config.mean_teacher
  if m.consistency not in segmentation.CONSISTENCY_LOSSES:
    raise ConfigError(f'mean_teacher.consistency: unknown {m.consistency!r}; '
                      f'known: {", ".join(segmentation.CONSISTENCY_LOSSES)}')
  consistency = segmentation.CONSISTENCY_LOSSES[m.consistency](
      out.student_unlabeled['logits'], out.teacher_unlabeled['logits'])
  weight = m.weight * schedules.sigmoid_rampup(out.step, m.rampup_length, m.rampup_interval)
  weight = jnp.where(out.step >= m.start_step, weight, 0.0)
  return weight * consistency, {'consistency': consistency, 'consistency_weight': weight}


TERM = LossTerm('mean_teacher', mean_teacher, blocks, scale_schedules, needs_unlabeled=True,
                teacher=Teacher(input_fn=teacher_input, decay_fn=ema_decay))
