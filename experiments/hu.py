"""Hu et al. (MICCAI 2021): global + supervised local contrast, then fine-tuning; six experiments.

  python -m jaxseg.run --experiment acdc_hu_block --data-dir ../shared/data/ACDC --labeled-num 7
  python -m jaxseg.run --experiment acdc_hu_stride --data-dir ../shared/data/ACDC --labeled-num 7
  python -m jaxseg.run --experiment hippocampus_hu_block --data-dir /data/Task04_Hippocampus
  python -m jaxseg.run --experiment hippocampus_hu_stride --data-dir /data/Task04_Hippocampus \
      --set data.labeled_fraction=0.2
  python -m jaxseg.run --experiment mmwhs_hu_block --data-dir /data/MMWHS
  python -m jaxseg.run --experiment mmwhs_hu_stride --data-dir /data/MMWHS \
      --set data.labeled_fraction=0.4

`<dataset>_hu_<mode>`: the local contrast made tractable by 16x16 `block` division or `stride`
downsampling (s = 4). Paper (Table 1, Dice at 5/10/20% labeled Hippocampus volumes and 10/20/40%
MM-WHS ones, averaged over four random splits, here `data.split_seed`):
  global+local(block)   Hippocampus 0.824/0.849/0.866   MM-WHS 0.382/0.553/0.764
  global+local(stride)  Hippocampus 0.822/0.851/0.863   MM-WHS 0.384/0.525/0.758
Hu's Dice is one Dice over all test slices, ours is per volume, so the numbers compare only
roughly; Hu et al. report no ACDC numbers: there the comparison is with acdc_supervised at the
same budget (BUILD_NOTES.md). Random init is hippocampus_supervised / mmwhs_supervised.
Without --data-dir: the synthetic phantom, 150 + 150 + 700 steps, for every dataset.
Quick profile of the ACDC ones (`--profile quick`, real data): the budget every 2D ACDC method
shares (jaxseg.config.quick_profile: 1,500 steps at 128x128, 6 + 6 images per step, validation
every 100 steps); the three stages keep their proportions (517 + 621 + 362 steps), blocks and
strides follow the image size (8-pixel blocks, stride 2).

Stages (jaxseg/training/stages.py), each starting from the one before with a fresh optimizer:
  pretrain_global  SimCLR NT-Xent (eq. 1, tau 0.5) on every training image, no labels: encoder
                   + projection head, two independently augmented views (crop/rotate/flip +
                   intensity); no validation (the decoder is untrained).
  pretrain_local   supervised local contrast (eq. 2, tau 0.1) on labeled images and their
                   intensity-only twins: encoder + decoder + pixel head; stride 4 or 16x16 blocks.
  finetune         CE + soft Dice on labeled images (the `supervised` term), validated and
                   checkpointed as any run; its best checkpoint is the run's result.
Table 1's variants are stage orders (`--set stage_order=...`):
  random init        ('finetune',)
  global             ('pretrain_global', 'finetune')
  local (stride/block)   ('pretrain_local', 'finetune')
  global + local     ('pretrain_global', 'pretrain_local', 'finetune')   [default]
Optimizer: Adam throughout (paper), lr 1e-4 for contrast; fine-tuning lr 5e-4 as the public code
(the paper prints 1e-5; `--set stages.finetune.optimizer.lr=1e-5`), see BUILD_NOTES.md.
"""

import ml_collections

from jaxseg import config as config_lib

MODES = ('stride', 'block')
EXPERIMENTS = ('acdc_hu_block', 'acdc_hu_stride', 'hippocampus_hu_block', 'hippocampus_hu_stride',
               'mmwhs_hu_block', 'mmwhs_hu_stride')  # <dataset>_hu_<mode>
PROFILES = {f'acdc_hu_{mode}': ('paper', 'quick', 'cpu') for mode in MODES}


def get_config(profile: str, name: str):
  dataset, _, mode = name.split('_')
  return {'acdc': acdc_hu, 'hippocampus': hippocampus_hu, 'mmwhs': mmwhs_hu}[dataset](mode, profile)


def hu_config(mode: str, *, global_steps: int, local_steps: int, finetune_steps: int,
              global_batch: int, local_batch: int, finetune_batch: int):
  """The staged config on top of the base (data set-up is the caller's)."""
  if mode not in MODES:
    raise ValueError(mode)
  config = config_lib.base_config(losses=('supervised',),
                                  stage_losses=('global_contrast', 'local_contrast'))
  config.model.projection_dim = 128
  config.model.pixel_projection_dim = 64
  config.optimizer.update(name='adam', lr=1e-4, weight_decay=0.0, schedule='constant')
  config.local_contrast.update(mode=mode, stride=4, block=16, form='supcon', tau=0.1)
  config.global_contrast.tau = 0.5
  config.stage_order = ('pretrain_global', 'pretrain_local', 'finetune')
  config.stages = ml_collections.ConfigDict({
      'pretrain_global': {
          'steps': global_steps, 'losses': ('global_contrast',),
          'data': {'unlabeled_source': 'all', 'unlabeled_views': 'independent',
                   'strong_ops': ('brightness', 'contrast', 'gamma', 'blur', 'noise'),
                   'unlabeled_batch': global_batch},
          'eval': {'every': 0}},
      'pretrain_local': {
          'steps': local_steps, 'losses': ('local_contrast',),
          'data': {'labeled_views': 'twin', 'labeled_batch': local_batch},
          'eval': {'every': 0}},
      'finetune': {
          'steps': finetune_steps, 'losses': ('supervised',),
          'optimizer': {'lr': 5e-4},
          'data': {'labeled_batch': finetune_batch}},
  })
  return config


def acdc_hu(mode: str, profile: str):
  """ACDC at 7 labeled patients (136 of 1,312 slices), 256x256, in the SSL4MIS protocol.

  Hu et al.'s epochs as steps: global 70 epochs of 1,312 slices at batch 48 (2,000 steps),
  local 70 epochs of 136 slices at batch 4 (2,400), fine-tuning 120 epochs at batch 12 (1,400).
  'quick': the shared reduced budget (config.quick_profile), the stages in these proportions.
  """
  if profile == 'cpu':
    config = hu_config(mode, global_steps=150, local_steps=150, finetune_steps=700,
                       global_batch=8, local_batch=4, finetune_batch=4)
    config_lib.cpu_profile(config, steps=700)
    return config
  config = hu_config(mode, global_steps=2_000, local_steps=2_400, finetune_steps=1_400,
                     global_batch=48, local_batch=4, finetune_batch=12)
  if profile == 'quick':
    config_lib.quick_profile(config)
    # Pixel sizes follow the image (256 -> 128): the same number of sampled pixels and blocks.
    config.local_contrast.update(stride=2, block=8)
  return config


def hippocampus_hu(mode: str, profile: str):
  """MSD Hippocampus at 10% labeled (16 of 156 training volumes), 64x64 slices.

  Hu's epochs as steps, with ~36 slices per volume (5,600 training slices, 580 labeled): global
  70 epochs at batch 120 (3,300 steps), local 70 epochs at batch 4 (10,000), fine-tuning 120
  epochs at batch 8 (8,640, as hippocampus_supervised).
  """
  if profile == 'cpu':
    return acdc_hu(mode, 'cpu')  # the synthetic phantom at the ACDC experiments' CPU budget
  config = hu_config(mode, global_steps=3_300, local_steps=10_000, finetune_steps=8_640,
                     global_batch=120, local_batch=4, finetune_batch=8)
  supervised = config_lib.experiment_module('supervised')
  return supervised.hippocampus_data(config)


def mmwhs_hu(mode: str, profile: str):
  """MM-WHS CT at 20% labeled (2 of 10 training volumes), 160x160 slices.

  Hu's epochs as steps, with ~250 slices per volume (2,500 training slices, 500 labeled): global
  70 epochs at batch 120 (1,460 steps), local 70 epochs at batch 4 (8,750), fine-tuning 120
  epochs at batch 8 (7,500, as mmwhs_supervised).
  """
  if profile == 'cpu':
    return acdc_hu(mode, 'cpu')
  config = hu_config(mode, global_steps=1_460, local_steps=8_750, finetune_steps=7_500,
                     global_batch=120, local_batch=4, finetune_batch=8)
  supervised = config_lib.experiment_module('supervised')
  return supervised.mmwhs_data(config)
