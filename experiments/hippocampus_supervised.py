"""Supervised baseline on Hippocampus (MSD Task04): Hu et al.'s 'Random' row, U-Net from scratch.

  python -m jaxseg.run --experiment hippocampus_supervised --data-dir /data/Task04_Hippocampus
  python -m jaxseg.run --experiment hippocampus_supervised --data-dir /data/Task04_Hippocampus \
      --set data.labeled_fraction=0.05 --set steps=4320

Paper (Hu et al., MICCAI 2021, Table 1, 'Random': trained on the labeled volumes only): Dice
0.788 / 0.833 / 0.852 with 5 / 10 / 20% of the training volumes labeled, averaged over four
random splits (here `data.split_seed`); Hu's Dice is one Dice over all test slices at 64x64,
ours is per volume at native size, so the numbers compare only roughly.
Data (jaxseg/data/msd.py): split 3:1:1 of the 260 volumes (156/52/52), slices along the last
NIfTI axis, min-max normalized per volume, resized bilinearly to 64x64; 10% = 16 volumes.
Segmentation stage as Hu's code (xhu248/semi_cotrast_seg configs/Config.py, SegExperiment.py):
Adam, no weight decay, batch 8, CE + soft Dice, 120 epochs, constant learning rate (its
ReduceLROnPlateau is never stepped). Learning rate 5e-4 as in that code's configs, not the
paper's 1e-5, 50 times smaller and not tried here: the released code is the only record of
what produced the table (`--set optimizer.lr=1e-5` for the paper's value). An epoch is one pass
over the labeled slices, floor(slices / 8) batches: 16 volumes of about 36 slices (estimated,
not counted) give 72 batches, so 120 epochs = 8,640 steps; scale steps with the fraction
(5%: 8 volumes, about 4,320; 20%: 31 volumes, about 16,700). The network is jaxseg's SSL4MIS
U-Net (five levels, batch norm), not Hu's three-block U-Net with instance norm.
Without --data-dir: the synthetic cardiac phantom at the CPU profile, to exercise the settings.
"""

from jaxseg import config as config_lib


def get_config(profile: str = 'paper'):
  config = config_lib.base_config()
  config.losses = ('supervised',)
  config.optimizer.update(name='adam', lr=5e-4, weight_decay=0.0, schedule='constant')
  config.data.labeled_batch = 8
  if profile == 'cpu':
    config_lib.cpu_profile(config)
    return config
  config.num_classes = 3
  config.class_names = ('anterior', 'posterior')
  config.steps = 8_640
  config.data.update(labeled_fraction=0.1, image_size=64,
                     image_order=1)  # bilinear, as Hu's resize
  config.data.msd.train_size = 64  # Hu's training slices, resized at load
  config.eval.update(patch_size=64, interp_order=1)
  return config
