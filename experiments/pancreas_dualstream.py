"""Dual-stream 3D (Karimijafarbigloo et al., 2024) on NIH Pancreas-CT, 12 of 62 volumes labeled.

  python -m jaxseg.run --experiment pancreas_dualstream --data-dir /data/Pancreas-CT
  python -m jaxseg.run --experiment pancreas_dualstream  # the 3D phantom, CPU profile (minutes)

Paper (Table 2, Pancreas): Dice 76.40, Jaccard 62.96, 95HD 10.69, ASD 2.79 (voxels); MCF 75.00.
The method and optimization of la_dualstream; data as §3.2 and the authors' code: HU window
-120..240, volumes cropped to the pancreas bounding box plus 25 voxels (jaxseg/data/pancreas.py),
random 96^3 crops, the first 12 of 62 training cases labeled, sliding window 96^3 with stride
16^3. Without --data-dir: the CPU profile of la_dualstream.
"""

from jaxseg import config as config_lib


def get_config(profile: str = 'paper'):
  config = config_lib.load_experiment('la_dualstream', profile)
  if profile == 'cpu':
    return config
  config.class_names = ('pancreas',)
  config.data.update(labeled_num=12, crop_shape=(96, 96, 96))
  config.eval.update(window=(96, 96, 96), stride=(16, 16, 16))
  return config
