"""Left atrium (2018 Atrial Segmentation Challenge) in the UA-MT layout, and the 3D split rules.

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

import concurrent.futures
import os
from collections.abc import Callable, Sequence

import ml_collections

from jaxseg.data import readers, splits
from jaxseg.data.sources import LazyVolumes, SegmentationData
from jaxseg.data.transforms3d import VolumeSource
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


def read_list(path: str) -> list[str]:
  """Non-empty, stripped lines of a case list (a trailing `.h5` is dropped)."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: list file is missing')
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise DataError(f'{path}: list file is empty')
  if len(set(names)) != len(names):
    raise DataError(f'{path}: a case is listed twice')
  return [n[:-3] if n.endswith('.h5') else n for n in names]


def holdout_split(train: Sequence[str], test: Sequence[str] | None, holdout_num: int,
                  what: str, folds: int = 0, fold: int = 0) -> tuple[list[str], list[str]]:
  """(training cases, validation cases): test.list when given, else the last `holdout_num`.

  With `folds` = K > 0 (K-fold cross-validation, `python -m jaxseg.run --folds K`): every case
  of train.list and test.list, in list order, cut into K contiguous folds; fold `fold`
  validates and the others train (their first cases labeled, as usual).
  """
  if folds:
    cases = list(train) + list(test or [])
    if not 1 < folds <= len(cases) or not 0 <= fold < folds:
      raise DataError(f'{what}: data.folds={folds}, data.fold={fold}: need 2 <= folds <= '
                      f'{len(cases)} cases and 0 <= fold < folds')
    bounds = [round(i * len(cases) / folds) for i in range(folds + 1)]
    val = cases[bounds[fold]:bounds[fold + 1]]
    return cases[:bounds[fold]] + cases[bounds[fold + 1]:], val
  if test:
    return list(train), list(test)
  if not 0 < holdout_num < len(train):
    raise DataError(f'{what}: no test.list, and data.holdout_num={holdout_num} must be between '
                    f'1 and {len(train) - 1} to hold out validation cases')
  return list(train[:-holdout_num]), list(train[-holdout_num:])


def load_all(names: Sequence[str], load: Callable[[str], Volume], threads: int) -> list[Volume]:
  """`load` over names in threads (h5/gzip reads release the GIL), in order."""
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    return list(pool.map(load, names))


def load_case(path: str | os.PathLike, name: str = '') -> Volume:
  """One `mri_norm2.h5` as a Volume in the stored (x, y, z) order; labels must be 0 or 1."""
  path = os.fspath(path)
  image, label = readers.read_h5(path, num_classes=NUM_CLASSES, require_label=True)
  if image.ndim != 3:
    raise DataError(f'{path}: expected a 3D volume, got shape {image.shape}')
  name = name or os.path.basename(os.path.dirname(path))
  return Volume(name=name, image=image, label=label, spacing=SPACING, path=path)


def load_la(config: ml_collections.ConfigDict) -> SegmentationData:
  """LA as SegmentationData (see the module docstring for the split)."""
  splits.check_num_classes(config, NUM_CLASSES, 'LA')
  root = config.data.dir
  train_list = os.path.join(root, 'train.list')
  test_list = os.path.join(root, 'test.list')
  train = read_list(train_list)
  test = read_list(test_list) if os.path.exists(test_list) else None
  for list_path, names in ((train_list, train), (test_list, test or [])):
    for name in names:
      path = os.path.join(root, CASES_FOLDER, name, CASE_FILE)
      if not os.path.isfile(path):
        raise DataError(f'{path}: listed in {os.path.basename(list_path)} but missing')
  train, val = holdout_split(train, test, int(config.data.holdout_num), train_list,
                             int(config.data.folds), int(config.data.fold))
  n_labeled = splits.num_labeled(config, len(train) - 1, train_list)

  def load(name: str) -> Volume:
    return load_case(os.path.join(root, CASES_FOLDER, name, CASE_FILE), name)

  volumes = load_all(train, load, config.data.read_threads)
  val_from = ('test.list' if test else f'the last {len(val)} of train.list') if not (
      config.data.folds) else f'fold {config.data.fold + 1} of {config.data.folds}'
  return SegmentationData(
      layout='la',
      labeled=VolumeSource(volumes[:n_labeled], with_label=True),
      unlabeled=VolumeSource(volumes[n_labeled:], with_label=False),
      splits={'val': LazyVolumes(val, load)},
      description=(f'LA (UA-MT h5) at {root}: {n_labeled} labeled cases, '
                   f'{len(train) - n_labeled} unlabeled, {len(val)} validation ({val_from})'))
