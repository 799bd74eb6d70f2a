"""Supervised baselines: the U-Net trained on labeled slices only, on ACDC, Hippocampus, MM-WHS.

  python -m jaxseg.run --experiment acdc_supervised --data-dir ../shared/data/ACDC --labeled-num 7
  python -m jaxseg.run --experiment acdc_fullysupervised --data-dir ../shared/data/ACDC
  python -m jaxseg.run --experiment hippocampus_supervised --data-dir /data/Task04_Hippocampus
  python -m jaxseg.run --experiment hippocampus_supervised --data-dir /data/Task04_Hippocampus \
      --set data.labeled_fraction=0.05 --set steps=4320
  python -m jaxseg.run --experiment mmwhs_supervised --data-dir /data/MMWHS
  python -m jaxseg.run --experiment mmwhs_supervised --data-dir /data/MMWHS \
      --set data.labeled_fraction=0.4 --set steps=15000

Each experiment's protocol and the numbers its paper reports are in its function below. The ACDC
ones have a quick profile (`--profile quick`, real data): the protocol reduced to the budget
every 2D ACDC method shares (jaxseg.config.quick_profile: QUICK_STEPS = 1,500 steps at 128x128,
6 labeled + 6 unlabeled images per step, validation every 100 steps), every step-counted
schedule multiplied by budget / paper budget (jaxseg.config.scale_schedules). Without
--data-dir: the synthetic cardiac phantom at the CPU profile.
"""

from jaxseg import config as config_lib

EXPERIMENTS = ('acdc_supervised', 'acdc_fullysupervised', 'hippocampus_supervised',
               'mmwhs_supervised')
PROFILES = {'acdc_supervised': ('paper', 'quick', 'cpu'),
            'acdc_fullysupervised': ('paper', 'quick', 'cpu')}


def get_config(profile: str, name: str):
  return {'acdc_supervised': acdc, 'acdc_fullysupervised': acdc_full,
          'hippocampus_supervised': hippocampus, 'mmwhs_supervised': mmwhs}[name](profile)


def acdc(profile: str, *, labeled_num: int = 7, labeled_batch: int = 12):
  """acdc_supervised: the lower bound the semi-supervised methods beat.

  SSL4MIS protocol: 7 labeled patients (136 slices, 10%), 256x256, batch 12 labeled, SGD 0.01
  with poly decay, 30,000 iterations, 0.5 * (CE + Dice). SSL4MIS reports about 0.77 mean Dice on
  the ACDC test set at 10% labels. CPU profile: the phantom with 4 of 40 volumes labeled, 1,000
  steps (~10 min on 2 CPU cores); record of what it gives in BUILD_NOTES.md.
  """
  config = config_lib.base_config(losses=('supervised',))
  config.data.labeled_num = labeled_num
  config.data.labeled_batch = labeled_batch
  if profile == 'quick':
    config_lib.quick_profile(config)
  if profile == 'cpu':
    config_lib.cpu_profile(config)
  return config


def acdc_full(profile: str):
  """acdc_fullysupervised: the upper bound, every training slice labeled.

  As acdc_supervised with all 70 training patients (1,312 slices) labeled and SSL4MIS's fully
  supervised batch of 24 labeled slices (quick: 2 x QUICK_BATCH; CPU: 8, all 40 phantom volumes
  labeled). SSL4MIS reports about 0.91 mean Dice on the ACDC test set.
  """
  config = acdc('paper', labeled_num=70, labeled_batch=24)
  if profile == 'quick':
    config_lib.quick_profile(config)
    config.data.labeled_batch = 2 * config_lib.QUICK_BATCH  # as the paper's 24 = 2 x 12
  if profile == 'cpu':
    config_lib.cpu_profile(config)
    config.data.labeled_num = config.data.synthetic.num_train
    config.data.labeled_batch = 8  # twice the semi-supervised labeled batch, as in SSL4MIS
  return config


def hu_segmentation(profile: str, steps: int):
  """The segmentation stage of Hu et al.'s code (xhu248/semi_cotrast_seg configs/Config*.py,
  SegExperiment.py): Adam, no weight decay, batch 8, CE + soft Dice, 120 epochs, constant
  learning rate (its ReduceLROnPlateau is never stepped). Learning rate 5e-4 as in that code's
  configs, not the paper's 1e-5, 50 times smaller and not tried here: the released code is the
  only record of what produced the table (`--set optimizer.lr=1e-5` for the paper's value). The
  network is jaxseg's SSL4MIS U-Net (five levels, batch norm), not Hu's three-block U-Net with
  instance norm. An epoch is one pass over the labeled slices, floor(slices / 8) batches."""
  config = config_lib.base_config(losses=('supervised',))
  config.optimizer.update(name='adam', lr=5e-4, weight_decay=0.0, schedule='constant')
  config.data.labeled_batch = 8
  if profile == 'cpu':
    config_lib.cpu_profile(config)
  else:
    config.steps = steps
  return config


def hippocampus(profile: str):
  """hippocampus_supervised: Hu et al.'s 'Random' row on MSD Task04, U-Net from scratch.

  Paper (Hu et al., MICCAI 2021, Table 1, 'Random': trained on the labeled volumes only): Dice
  0.788 / 0.833 / 0.852 with 5 / 10 / 20% of the training volumes labeled, averaged over four
  random splits (here `data.split_seed`); Hu's Dice is one Dice over all test slices at 64x64,
  ours is per volume at native size, so the numbers compare only roughly.
  Data (jaxseg/data/msd.py): split 3:1:1 of the 260 volumes (156/52/52), slices along the last
  NIfTI axis, min-max normalized per volume, resized bilinearly to 64x64; 10% = 16 volumes.
  16 volumes of about 36 slices (estimated, not counted) give 72 batches, so 120 epochs = 8,640
  steps; scale steps with the fraction (5%: 8 volumes, about 4,320; 20%: 31 volumes, about
  16,700).
  """
  config = hu_segmentation(profile, steps=8_640)
  return config if profile == 'cpu' else hippocampus_data(config)


def hippocampus_data(config):
  """MSD Hippocampus at 10% labeled volumes, 64x64 slices (here and in experiments/hu.py)."""
  config.num_classes = 3
  config.class_names = ('anterior', 'posterior')
  config.data.update(labeled_fraction=0.1, image_size=64, image_order=1)  # bilinear, as Hu's
  config.data.msd.train_size = 64  # Hu's training slices, resized at load
  config.eval.update(patch_size=64, interp_order=1)
  return config


def mmwhs(profile: str):
  """mmwhs_supervised: Hu et al.'s 'Random' row on MM-WHS cardiac CT, U-Net from scratch.

  Paper (Hu et al., MICCAI 2021, Table 1, 'Random'): Dice 0.328 / 0.440 / 0.715 with 10 / 20 /
  40% of the training volumes labeled, averaged over four random splits (here
  `data.split_seed`); Hu's Dice is one Dice over all test slices at 160x160, ours is per volume
  at native size, so the numbers compare only roughly.
  Data (jaxseg/data/mmwhs.py): the 20 CT cases split 2:1:1 (10/5/5), seven structures (MYO, LA,
  LV, RA, RV, AA, PA) as classes 1..7, axial slices min-max normalized per volume and resized
  bilinearly to 160x160 at load; validation and test volumes stay native (512x512) and are
  read one at a time. 20% = 2 labeled cases, about 250 slices each (estimated; MM-WHS CT has
  some 200 to 300): about 62 batches, so 120 epochs = 7,500 steps (10%: about 3,750; 40%:
  about 15,000).
  """
  config = hu_segmentation(profile, steps=7_500)
  return config if profile == 'cpu' else mmwhs_data(config)


def mmwhs_data(config):
  """MM-WHS CT at 20% labeled volumes, 160x160 slices (here and in experiments/hu.py)."""
  from jaxseg.data import mmwhs as mmwhs_data  # noqa: PLC0415
  config.num_classes = mmwhs_data.NUM_CLASSES
  config.class_names = mmwhs_data.CLASS_NAMES
  config.data.update(labeled_fraction=0.2, image_size=160, image_order=1)  # bilinear, as Hu's
  config.data.mmwhs.train_size = 160  # Hu's training slices, resized at load
  # A validation pass reads 5 CT volumes of some 100 MB each: every 500 steps, not 200.
  config.eval.update(every=500, patch_size=160, interp_order=1)
  return config
