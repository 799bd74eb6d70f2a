"""Optimizers, learning-rate schedules and loss-weight ramps (the EMA teacher's decay rule is the
mean teacher's: jaxseg/methods/mean_teacher.py)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

from jaxseg.errors import ConfigError


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
  o = config.optimizer
  if o.schedule == 'poly':
    # SSL4MIS: lr_t = lr * (1 - t / max_iterations) ** 0.9.
    return optax.polynomial_schedule(o.lr, 0.0, o.poly_power, transition_steps=config.steps)
  if o.schedule == 'constant':
    return optax.constant_schedule(o.lr)
  if o.schedule == 'step':
    # UA-MT / MCF: lr_t = lr * 0.1 ** (t // 2500); their update after iteration 2,500 is the
    # first at the lower rate, as step index 2,500 here.
    if o.decay_every <= 0:
      raise ConfigError(f'optimizer.decay_every={o.decay_every} must be positive')
    return optax.exponential_decay(o.lr, transition_steps=o.decay_every,
                                   decay_rate=o.decay_factor, staircase=True)
  raise ConfigError(f'optimizer.schedule: unknown schedule {o.schedule!r}; '
                    'known: poly, constant, step')


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  lr = learning_rate(config)
  if o.name == 'sgd':
    # PyTorch SGD adds weight_decay * param to the gradient before momentum: same order here.
    return optax.chain(optax.add_decayed_weights(o.weight_decay),
                       optax.sgd(lr, momentum=o.momentum or None))
  if o.name == 'adam':
    return optax.chain(optax.add_decayed_weights(o.weight_decay), optax.adam(lr))
  raise ConfigError(f'optimizer.name: unknown optimizer {o.name!r}; known: sgd, adam')


def sigmoid_rampup(step, length: float, interval: int = 1):
  """exp(-5 (1 - t)^2) with t = (step // interval) * interval / length clipped to [0, 1].

  SSL4MIS `sigmoid_rampup(iter // 150, 200)` is `length=30000, interval=150`.
  """
  if length <= 0:
    return jnp.ones_like(jnp.asarray(step, jnp.float32))
  t = jnp.clip((step // interval) * interval / length, 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)

