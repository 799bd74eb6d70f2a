"""Hu et al. (MICCAI 2021), global + supervised local contrast with block division (16x16 blocks), on ACDC.

  python -m jaxseg.run --experiment acdc_hu_block --data-dir ../shared/data/ACDC --labeled-num 7

Three stages in one run (experiments/_hu.py): SimCLR global contrast on all 1,312 training
slices, supervised local contrast on the 136 labeled slices, fine-tuning with CE + Dice. Hu et al.
report Dice on Hippocampus/MMWHS only (Table 1: global+local(block) 0.824/0.849/0.866 on Hippocampus at 5/10/20%, 0.382/0.553/0.764 on MMWHS at 10/20/40%); on ACDC
the comparison is with acdc_supervised at the same budget (BUILD_NOTES.md). Without --data-dir:
the synthetic phantom, 150 + 150 + 700 steps.
Quick profile (`--profile quick`, real data): the budget every 2D ACDC method shares
(jaxseg.config.quick_profile: 1,500 steps at 128x128, 6 + 6 images per step, validation every
100 steps); the three stages keep their proportions (517 + 621 + 362 steps), blocks and strides
follow the image size (8-pixel blocks, stride 2).
"""

from jaxseg import config as config_lib

_hu = config_lib.experiment_module('_hu')
PROFILES = ('paper', 'quick', 'cpu')


def get_config(profile: str = 'paper'):
  return _hu.acdc_hu('block', profile)
