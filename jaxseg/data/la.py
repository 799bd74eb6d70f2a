"""Left atrium (2018 Atrial Segmentation Challenge) in the UA-MT layout.

Layout (github.com/yulequan/UA-MT, `data/`): `<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`
with datasets `image` (float32, already normalized by UA-MT's preprocessing) and `label` (uint8,
0 background, 1 left atrium), and the case lists `<root>/train.list` (80 IDs in UA-MT) and
`<root>/test.list` (20 IDs). Voxels are 0.625 mm isotropic.

Axis order: the arrays are kept as stored, (x, y, z) with the 88 MRI slices last, and jaxseg's
(D, H, W) is that order positionally. UA-MT's crop 112x112x80, sliding window 112x112x80 and
stride 18x18x4 are in this order, so they apply verbatim (`data.crop_shape`, `eval.window`,
`eval.stride`), and the rot90 augmentation over axes (0, 1) stays in-plane.

Protocol (UA-MT / MCF / Karimijafarbigloo et al.): the labeled cases are the first
`data.labeled_num` of train.list (16 of 80 in the papers), the rest unlabeled. Validation is
test.list when it exists (the papers report on it); without a test.list, the last
`data.holdout_num` cases of train.list are held out as validation and the rest split labeled
and unlabeled as above. Training volumes are read once at load (about 10 MB each), evaluation
volumes on access.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import LazyVolumes, SegmentationData, VolumeSource
from jaxseg.data.volume import Volume
from jaxseg.errors import DataError

NUM_CLASSES = 2
CLASS_NAMES = ('left atrium',)
CASES_FOLDER = '2018LA_Seg_Training Set'
CASE_FILE = 'mri_norm2.h5'
SPACING = (0.625, 0.625, 0.625)


def is_la_layout(root: str | os.PathLike) -> bool:
  """Whether root holds `train.list` and the `2018LA_Seg_Training Set` folder. Never raises."""
  root = os.fspath(root)
  return (os.path.isfile(os.path.join(root, 'train.list'))
          and os.path.isdir(os.path.join(root, CASES_FOLDER)))


def zscore(image: np.ndarray, config=None) -> np.ndarray:
  """`(x - mean) / std` per volume, as UA-MT prepared its `mri_norm2.h5` files (prediction)."""
  del config
  x = image.astype(np.float64)
  return ((x - x.mean()) / max(x.std(), 1e-8)).astype(np.float32)


def load_case(path: str | os.PathLike, name: str = '') -> Volume:
  """One `mri_norm2.h5` as a Volume in the stored (x, y, z) order; labels must be 0 or 1."""
  path = os.fspath(path)
  image, label = readers.read_h5(path, num_classes=NUM_CLASSES, require_label=True)
  if image.ndim != 3:
    raise DataError(f'{path}: expected a 3D volume, got shape {image.shape}')
  name = name or os.path.basename(os.path.dirname(path))
  return Volume(name=name, image=image, label=label, spacing=SPACING, path=path)


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """LA as SegmentationData (see the module docstring for the split)."""
  splits.check_num_classes(config, NUM_CLASSES, 'LA')
  root = config.data.dir
  train_list = os.path.join(root, 'train.list')
  test_list = os.path.join(root, 'test.list')
  train = splits.read_list(train_list)
  test = splits.read_list(test_list) if os.path.exists(test_list) else None
  for list_path, names in ((train_list, train), (test_list, test or [])):
    for name in names:
      path = os.path.join(root, CASES_FOLDER, name, CASE_FILE)
      if not os.path.isfile(path):
        raise DataError(f'{path}: listed in {os.path.basename(list_path)} but missing')
  train, val, val_from = splits.held_out(config, train, test, train_list)
  n_labeled = splits.num_labeled(config, len(train) - 1, train_list)

  def load_one(name: str) -> Volume:
    return load_case(os.path.join(root, CASES_FOLDER, name, CASE_FILE), name)

  return spec.assemble(
      'la', splits.load_all(train, load_one, config.data.read_threads), n_labeled,
      {'val': LazyVolumes(val, load_one)},
      f'LA (UA-MT h5) at {root}: {n_labeled} labeled cases, {len(train) - n_labeled} '
      f'unlabeled, {len(val)} validation ({val_from})',
      source=VolumeSource)


SPEC = spec.DatasetSpec(
    name='la', detect=is_la_layout, load=load, classes=spec.fixed_classes(CLASS_NAMES),
    axes=spec.stored_order, normalize=zscore,
    hint='LA train.list with 2018LA_Seg_Training Set/')
