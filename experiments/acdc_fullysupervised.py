"""Fully supervised upper bound: every training slice labeled.

  python -m jaxseg.run --experiment acdc_fullysupervised --data-dir ../shared/data/ACDC

Paper protocol as acdc_supervised but with all 70 training patients (1,312 slices) labeled;
SSL4MIS reports about 0.91 mean Dice on the ACDC test set. Without --data-dir: all 40 phantom
volumes labeled, 1,000 steps on the CPU profile.

Quick profile (`--profile quick`, real data): the protocol reduced to the budget every 2D ACDC
method shares (jaxseg.config.quick_profile: QUICK_STEPS = 1,500 steps at 128x128, 6 labeled +
6 unlabeled images per step, validation every 100 steps), every step-counted schedule multiplied by
budget / paper budget (jaxseg.config.scale_schedules).
"""

from jaxseg import config as config_lib

PROFILES = ('paper', 'quick', 'cpu')


def get_config(profile: str = 'paper'):
  config = config_lib.base_config()
  config.losses = ('supervised',)
  config.data.labeled_num = 70
  config.data.labeled_batch = 24  # SSL4MIS fully supervised: batch 24 of labeled slices
  if profile == 'quick':
    config_lib.quick_profile(config)
    config.data.labeled_batch = 2 * config_lib.QUICK_BATCH  # as the paper's 24 = 2 x 12
  if profile == 'cpu':
    config_lib.cpu_profile(config)
    config.data.labeled_num = config.data.synthetic.num_train
    config.data.labeled_batch = 8  # twice the semi-supervised labeled batch, as in SSL4MIS
  return config
