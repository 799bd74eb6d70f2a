"""Dual-stream 3D (Karimijafarbigloo et al., 2024) on the left atrium, 16 of 80 volumes labeled.

  python -m jaxseg.run --experiment la_dualstream --data-dir ../shared/data/LA
  python -m jaxseg.run --experiment la_dualstream      # the 3D phantom, CPU profile (minutes)

Paper (Table 1, LA, UA-MT split): Dice 89.10, Jaccard 81.62, 95HD 6.30, ASD 1.80 (voxels); MT
85.89 (la_meanteacher), MCF 88.71. Protocol (§3.1, the authors' MCF-based code): subnet A a V-Net,
subnet B a 3D ResNet-34 encoder-decoder, both with 16-channel voxel features; SGD lr 0.01,
momentum 0.9, weight decay 1e-4, lr x0.1 every 2,500 iterations, 6,000 iterations; 2 labeled + 2
unlabeled random 112x112x80 crops per step (random cropping only, as MCF); the first 16 cases of
train.list labeled; sliding window 112x112x80, stride 18x18x4, on the mean of the two softmaxes.
Loss (eq. 3, jaxseg/methods/dualstream.py): CE + Dice for both subnets, lambda_u = 1, lambda_c =
0.1 * exp(-5 (1 - t/6000)^2) (the printed 0.1 e^{4(1-t/t_max)^2}: --set
dualstream.contrast_schedule=paper). The shared ../shared/data/LA holds 24 of the 80 training
cases and no test.list: the last 4 validate, so the paper's numbers are not comparable there.

Ablations (paper, LA Dice): without L_reg -0.50: --set dualstream.reg_weight=0.0
                            without L_c   -0.73: --set dualstream.contrast_weight=0.0
The public code's choices: --set dualstream.detach_unlabeled=True (no gradient from unlabeled
volumes) --set dualstream.pseudo_label=union --set dualstream.entropy_percentile=20.0
--set dualstream.rampup_interval=150.

Without --data-dir: the 3D phantom (24 training volumes of 48^3, 4 labeled), 32^3 crops, 100
steps with the lr steps and ramps scaled by 100/6000, subnets at 4 base filters. Measured at 200
steps on 2 shared CPU cores: 26 minutes, validation Dice 0.80 at step 100 and no better after
(test 0.74), hence 100 steps; its numbers only show that the method trains.
"""

from jaxseg import config as config_lib

STEPS = 6000


def get_config(profile: str = 'paper'):
  return la_protocol(profile, losses=('dualstream',))  # supervises both subnets itself


def la_protocol(profile: str, losses):
  """The LA data, optimizer and evaluation of the paper (shared with la_meanteacher) for the
  loss terms `losses`."""
  config = config_lib.base_config(losses=losses)
  config.num_classes = 2
  config.class_names = ('left atrium',)
  config.steps = STEPS
  config.model.update(name='dualstream', subnets=('vnet', 'resnet3d'), base_filters=16)
  config.optimizer.update(name='sgd', lr=0.01, momentum=0.9, weight_decay=1e-4, schedule='step',
                          decay_every=2500, decay_factor=0.1)
  config.data.update(labeled_num=16, crop_shape=(112, 112, 80), labeled_batch=2,
                     unlabeled_batch=2, rot_flip=False, strong_noise=0.0)
  config.eval.update(mode='sliding_window', window=(112, 112, 80), stride=(18, 18, 4),
                     batch_size=4, units='voxels', every=500)
  config.checkpoint.every = 500
  if profile == 'cpu':
    cpu_profile_3d(config)
  return config


def cpu_profile_3d(config, steps: int = 100):
  """The protocol at the 3D phantom's scale: every step-counted schedule shrinks by steps/STEPS
  (the dualstream ramps follow `config.steps` by themselves)."""
  config_lib.scale_schedules(config, steps / config.steps, ema=False)
  config.steps = steps
  config.data.dir = ''
  config.class_names = ('target',)
  config.data.labeled_num = 4  # of the phantom's 24 training volumes, as 16 of 80
  config.data.crop_shape = (32, 32, 32)
  config.data.read_threads = 2
  config.model.base_filters = 4  # 8 costs 18 GFLOP a step, 4 costs 5
  config.eval.update(window=(32, 32, 32), stride=(16, 16, 16), batch_size=8, every=25)
  config.checkpoint.every = 50
  return config
