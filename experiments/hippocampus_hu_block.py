"""Hu et al. (MICCAI 2021), global + supervised local contrast with block division (16x16 blocks), on Hippocampus (MSD Task04).

  python -m jaxseg.run --experiment hippocampus_hu_block --data-dir ../shared/data/Task04_Hippocampus
  python -m jaxseg.run --experiment hippocampus_hu_block --data-dir ../shared/data/Task04_Hippocampus --set data.labeled_fraction=0.05

Paper (Table 1, global+local(block)): Dice 0.824/0.849/0.866 at 5/10/20% labeled volumes, averaged over
four random splits (`data.split_seed`); Hu's Dice is one Dice over all test slices, ours is per
volume, so the numbers compare only roughly. Stages and settings: experiments/_hu.py; the
variants of Table 1 are stage orders (random init: hippocampus_supervised). Without --data-dir: the
synthetic phantom at the CPU budget of acdc_hu_block.
"""

from jaxseg import config as config_lib

_hu = config_lib.experiment_module('_hu')


def get_config(profile: str = 'paper'):
  return _hu.hippocampus_hu('block', profile)
