"""PLGCL on CRAG (colorectal gland histology, H&E), 10% of the images labeled.

  python -m jaxseg.run --experiment crag_plgcl --data-dir /data/CRAG
  python -m jaxseg.run --experiment crag_plgcl --data-dir /data/CRAG --set data.labeled_fraction=0.2

Paper (Table 2, CRAG, 10% labeled): DSC 0.882, HD95 1.50, ASD 2.42 (20%: 0.891; fully
supervised 0.911). The 213 images of train/ and valid/ are pooled and split 80/10/10 with a seeded
permutation (the paper's split is unpublished); images in gray (BT.601; `data.crag.channels=3` for
RGB) resized to 256x256. Same method settings as acdc_plgcl. Without --data-dir: the synthetic
cardiac phantom at the CPU profile, to exercise the method only.
"""

from jaxseg import config as config_lib


def get_config(profile: str = 'paper'):
  config = config_lib.load_experiment('acdc_plgcl', profile)
  if profile == 'cpu':
    return config
  config.num_classes = 2
  config.class_names = ('gland',)
  config.data.labeled_fraction = 0.1
  return config
