"""Checkpoints (jaxseg/training/checkpoint.py): a state saved with an EMA teacher (every run
before states kept a teacher only for a term that needs one) restores into a teacher-less one."""

import jax
import numpy as np

from conftest import tiny_config
from jaxseg.models import build_model
from jaxseg.training import checkpoint, schedules, step as step_lib


def test_a_checkpoint_with_a_teacher_restores_into_a_state_without_one(tmp_path):
  with_teacher = tiny_config('smoke')  # mean teacher: its state keeps a teacher
  model, tx = build_model(with_teacher), schedules.optimizer(with_teacher)
  state = step_lib.init_state(model, tx, with_teacher)
  assert state.teacher_params is not None
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  try:
    ckpts.save('best', 3, state, None, {'step': 3})
  finally:
    ckpts.close()

  supervised = tiny_config('smoke')
  with supervised.unlocked():
    supervised.losses = ('supervised',)
  template = step_lib.abstract_state(model, tx, supervised)
  assert template.teacher_params is None
  reader = checkpoint.Checkpoints.of_finished_run(str(tmp_path))
  try:
    restored, _, meta = reader.restore('best', template)
  finally:
    reader.close()
  assert meta['step'] == 3
  assert restored.teacher_params is None and restored.teacher_batch_stats is None
  jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(state.params))
  # A template that keeps a teacher still gets the saved one.
  reader = checkpoint.Checkpoints.of_finished_run(str(tmp_path))
  try:
    again, _, _ = reader.restore('best', step_lib.abstract_state(model, tx, with_teacher))
  finally:
    reader.close()
  jax.tree.map(np.testing.assert_array_equal, again.teacher_params,
               jax.device_get(state.teacher_params))


def test_a_state_without_a_teacher_round_trips(tmp_path):
  config = tiny_config('acdc_supervised')
  model, tx = build_model(config), schedules.optimizer(config)
  state = step_lib.init_state(model, tx, config)
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  try:
    ckpts.save('latest', 1, state, {'position': 5}, {'step': 1})
    restored, data, _ = ckpts.restore('latest', step_lib.abstract_state(model, tx, config))
  finally:
    ckpts.close()
  assert restored.teacher_params is None and data == {'position': 5}
  jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(state.params))
