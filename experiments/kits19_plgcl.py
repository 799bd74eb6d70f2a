"""PLGCL on KiTS19 (kidney and tumour CT), 10% of the training cases labeled.

  python -m jaxseg.run --experiment kits19_plgcl --data-dir /data/kits19
  python -m jaxseg.run --experiment kits19_plgcl --data-dir /data/kits19 --set data.labeled_fraction=0.025

Paper (Table 2, KiTS19, 10% labeled): DSC 0.919, HD95 6.32, ASD 1.51 (fully supervised 0.934).
Split 150/20/40 of the 210 cases (the paper's split is unpublished: a seeded permutation,
`data.split_seed`); CT windowed to -79..304 HU; slices resized to 256 at load (estimated, not
measured: 150 cases at 512x512 in float32 would need over 30 GB). Same method settings as
acdc_plgcl. Without --data-dir: the synthetic cardiac phantom at the CPU profile, to exercise the
method only.
"""

from jaxseg import config as config_lib


def get_config(profile: str = 'paper'):
  config = config_lib.load_experiment('acdc_plgcl', profile)
  if profile == 'cpu':
    return config
  config.num_classes = 3
  config.class_names = ('kidney', 'tumour')
  config.data.update(labeled_fraction=0.1, image_size=256)
  config.data.kits19.train_size = 256
  config.eval.patch_size = 256
  return config
