"""Hu et al. (MICCAI 2021), global + supervised local contrast with downsampling (s = 4), on MM-WHS CT.

  python -m jaxseg.run --experiment mmwhs_hu_stride --data-dir /data/MMWHS
  python -m jaxseg.run --experiment mmwhs_hu_stride --data-dir /data/MMWHS --set data.labeled_fraction=0.4

Paper (Table 1, global+local(stride)): Dice 0.384/0.525/0.758 at 10/20/40% labeled volumes, averaged over
four random splits (`data.split_seed`); Hu's Dice is one Dice over all test slices, ours is per
volume, so the numbers compare only roughly. Stages and settings: experiments/_hu.py; the
variants of Table 1 are stage orders (random init: mmwhs_supervised). Without --data-dir: the
synthetic phantom at the CPU budget of acdc_hu_stride.
"""

from jaxseg import config as config_lib

_hu = config_lib.experiment_module('_hu')


def get_config(profile: str = 'paper'):
  return _hu.mmwhs_hu('stride', profile)
