"""Mean teacher (Tarvainen & Valpola 2017) as the SSL4MIS ACDC baseline.

  python -m jaxseg.run --experiment acdc_meanteacher --data-dir ../shared/data/ACDC --labeled-num 7

SSL4MIS protocol: batch 12 labeled + 12 unlabeled at 256x256, SGD 0.01 poly, 30,000 iterations;
consistency = MSE of softmax between the student and the EMA teacher (input noise N(0, 0.1)
clipped to 0.2), weight 0.1 * sigmoid ramp-up over 200 x 150 iterations, off before iteration
1,000; EMA alpha = min(1 - 1/(t+1), 0.99). SSL4MIS reports about 0.80 mean Dice on the ACDC test
set at 7 labeled patients. Without --data-dir: the synthetic phantom, 4 of 40 volumes labeled,
1,000 steps with every schedule scaled by 1000/30000.

Quick profile (`--profile quick`, real data): the protocol reduced to the budget every 2D ACDC
method shares (jaxseg.config.quick_profile: QUICK_STEPS = 1,500 steps at 128x128, 6 labeled +
6 unlabeled images per step, validation every 100 steps), every step-counted schedule multiplied by
budget / paper budget (jaxseg.config.scale_schedules): the consistency ramp
and start, and the EMA horizon (at least 20 steps).
"""

from jaxseg import config as config_lib

PROFILES = ('paper', 'quick', 'cpu')


def get_config(profile: str = 'paper'):
  config = config_lib.base_config(losses=('supervised', 'mean_teacher'))
  if profile == 'quick':
    config_lib.quick_profile(config)
  if profile == 'cpu':
    config_lib.cpu_profile(config)
  return config
