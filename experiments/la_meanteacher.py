"""Mean teacher (Tarvainen & Valpola 2017) with a 3D V-Net on the left atrium: the UA-MT baseline.

  python -m jaxseg.run --experiment la_meanteacher --data-dir ../shared/data/LA
  python -m jaxseg.run --experiment la_meanteacher      # the 3D phantom, CPU profile (minutes)

Reported (Karimijafarbigloo et al. Table 1, from MCF; 16 of 80 labeled): Dice 85.89, Jaccard 76.58,
95HD 12.63, ASD 3.44 (voxels). The LA protocol of la_dualstream (SGD 0.01 x0.1 every 2,500
iterations, 6,000 iterations, 2 labeled + 2 unlabeled 112x112x80 crops, sliding window stride
18x18x4) with UA-MT's mean teacher: one V-Net, rot90/flip before the crop, supervised
0.5 * (CE + Dice), consistency = MSE of softmax against the EMA teacher (alpha min(1 - 1/(t+1),
0.99)) whose input gets clip(N(0, 0.1), -0.2, 0.2), weight 0.1 * sigmoid ramp-up over 40 x 150
iterations from the first step. One difference to UA-MT: the shared 'supervised' term's Dice
averages background and foreground (UA-MT's is foreground only).

Without --data-dir: the CPU profile of la_dualstream (the 3D phantom, 32^3 crops, 100 steps,
4 base filters) with the ramp scaled the same way.
"""

from jaxseg import config as config_lib

# UA-MT: sigmoid_rampup(iter_num // 150, 40) over 6,000 iterations.
RAMP_EPOCHS, ITERS_PER_EPOCH, PAPER_STEPS = 40, 150, 6000


def get_config(profile: str = 'paper'):
  la = config_lib.experiment_module('la_dualstream')
  config = la.la_protocol(profile, losses=('supervised', 'mean_teacher'))
  config.supervised.kind = 'ce_dice'
  config.model.name = 'vnet'
  config.data.rot_flip = True  # UA-MT's RandomRotFlip
  scale = config.steps / PAPER_STEPS
  config.mean_teacher.update(
      consistency='mse', weight=0.1, start_step=0, teacher_noise=0.1, teacher_noise_clip=0.2,
      rampup_length=int(RAMP_EPOCHS * ITERS_PER_EPOCH * scale),
      rampup_interval=max(1, int(ITERS_PER_EPOCH * scale)))
  config.ema.update(rule='ssl4mis', decay=0.99)
  return config
