"""Supervised baseline on MM-WHS cardiac CT: Hu et al.'s 'Random' row, U-Net from scratch.

  python -m jaxseg.run --experiment mmwhs_supervised --data-dir /data/MMWHS
  python -m jaxseg.run --experiment mmwhs_supervised --data-dir /data/MMWHS \
      --set data.labeled_fraction=0.4 --set steps=15000

Paper (Hu et al., MICCAI 2021, Table 1, 'Random': trained on the labeled volumes only): Dice
0.328 / 0.440 / 0.715 with 10 / 20 / 40% of the training volumes labeled, averaged over four
random splits (here `data.split_seed`); Hu's Dice is one Dice over all test slices at
160x160, ours is per volume at native size, so the numbers compare only roughly.
Data (jaxseg/data/mmwhs.py): the 20 CT cases split 2:1:1 (10/5/5), seven structures (MYO, LA,
LV, RA, RV, AA, PA) as classes 1..7, axial slices min-max normalized per volume and resized
bilinearly to 160x160 at load; validation and test volumes stay native (512x512) and are
read one at a time. 20% = 2 labeled cases.
Segmentation stage as Hu's code (xhu248/semi_cotrast_seg configs/Config_mmwhs.py): Adam, no
weight decay, batch 8, CE + soft Dice, 120 epochs, constant learning rate 5e-4 (the code's;
the paper says 1e-5: see hippocampus_supervised.py). An epoch is floor(slices / 8) batches: 2
cases of about 250 slices (estimated; MM-WHS CT has some 200 to 300) give about 62 batches, so
120 epochs = 7,500 steps (10%: about 3,750; 40%: about 15,000).
Without --data-dir: the synthetic cardiac phantom at the CPU profile, to exercise the settings.
"""

from jaxseg import config as config_lib
from jaxseg.data import mmwhs


def get_config(profile: str = 'paper'):
  config = config_lib.base_config()
  config.losses = ('supervised',)
  config.optimizer.update(name='adam', lr=5e-4, weight_decay=0.0, schedule='constant')
  config.data.labeled_batch = 8
  if profile == 'cpu':
    config_lib.cpu_profile(config)
    return config
  config.num_classes = mmwhs.NUM_CLASSES
  config.class_names = mmwhs.CLASS_NAMES
  config.steps = 7_500
  config.data.update(labeled_fraction=0.2, image_size=160,
                     image_order=1)  # bilinear, as Hu's resize
  config.data.mmwhs.train_size = 160  # Hu's training slices, resized at load
  # A validation pass reads 5 CT volumes of some 100 MB each: every 500 steps, not 200.
  config.eval.update(every=500, patch_size=160, interp_order=1)
  return config
