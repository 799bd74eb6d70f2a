"""Supervised baseline: the SSL4MIS U-Net trained on the labeled slices only.

  python -m jaxseg.run --experiment acdc_supervised --data-dir ../shared/data/ACDC --labeled-num 7

Paper protocol: 7 labeled patients (136 slices, 10%), 256x256, batch 12 labeled, SGD 0.01 with
poly decay, 30,000 iterations, 0.5 * (CE + Dice). SSL4MIS reports about 0.77 mean Dice on the
ACDC test set for this baseline at 10% labels; the lower bound the semi-supervised methods beat.
Without --data-dir: the synthetic phantom with 4 of 40 volumes labeled, 1,000 steps (~10 min on
2 CPU cores); record of what it gives in BUILD_NOTES.md.

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
  if profile == 'quick':
    config_lib.quick_profile(config)
  if profile == 'cpu':
    config_lib.cpu_profile(config)
  return config
