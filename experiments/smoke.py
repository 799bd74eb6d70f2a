"""Smoke test: mean teacher on a tiny phantom at 32x32 for a few steps; seconds on a CPU.

  python -m jaxseg.run --experiment smoke

Checks that data, step, validation, checkpoints and the final table work end to end. Its numbers
mean nothing.
"""

from jaxseg import config as config_lib


def get_config(profile: str = 'paper'):
  del profile  # always tiny
  config = config_lib.base_config(losses=('supervised', 'mean_teacher'))
  config_lib.cpu_profile(config, steps=6)
  config.data.synthetic.update(num_train=6, num_val=2, num_test=2, num_slices=3, size=32)
  config.data.labeled_num = 2
  config.data.image_size = 32
  config.data.labeled_batch = 2
  config.data.unlabeled_batch = 2
  config.model.channels = (4, 8, 16)
  config.model.dropout = (0.0, 0.1, 0.2)
  config.eval.update(every=3, patch_size=32, batch_size=4)
  config.checkpoint.every = 3
  config.log_every = 1
  return config
