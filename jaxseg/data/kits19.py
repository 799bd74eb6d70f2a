"""KiTS19 (kidney and kidney-tumour CT) in its official layout.

Layout (github.com/neheller/kits19): `case_XXXXX/imaging.nii.gz` and
`case_XXXXX/segmentation.nii.gz`, under the data folder itself or under `<root>/data/` as the
official repository keeps them. Labels: 0 background, 1 kidney, 2 tumour. The 210 training
cases are case_00000..case_00209; cases from 210 on are the challenge test set, released
without segmentation, and are ignored here.

PLGCL (Basak & Yin, CVPR 2023, section 4.1) splits the 210 cases 150/20/40 (train/val/test)
"following [26]" and uses 2.5% and 10% of the training data as labeled "following [51]"
(section 4.2); neither the case lists nor the CT window are published, so:
  - the split is a seeded permutation of the sorted case names (`split_cases`);
  - the labeled cases are the first round(fraction x 150) cases of that permuted training
    list: 4 cases for 2.5%, 15 for 10% (`splits.labeled_subset`);
  - intensities are clipped to -79..304 HU, the KiTS19 window of nnU-Net (Isensee et al.,
    Nature Methods 2021: the 0.5 and 99.5 percentiles of the foreground HU), then mapped
    linearly to [0, 1] by the window bounds (`window_ct`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxseg.data import readers, splits, transforms
from jaxseg.data.sources import LazyVolumes, SegmentationData, VolumeSliceSource
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError

NUM_CLASSES = 3
CLASS_NAMES = ('kidney', 'tumour')
# nnU-Net's KiTS19 window in Hounsfield units (see the module docstring).
DEFAULT_WINDOW = (-79.0, 304.0)
# The paper's split of the 210 training cases (section 4.1).
PAPER_SPLIT = {'train': 150, 'val': 20, 'test': 40}
# Official training cases; case_00210 and above are the unlabeled challenge test cases.
NUM_TRAINING_CASES = 210

_CASE_RE = re.compile(r'^case_(\d{5})$')


def _case_dirs(root: str) -> list[tuple[str, str]]:
  """(name, folder) of every `case_XXXXX` folder holding an imaging file, in root or root/data."""
  found = []
  for folder in (root, os.path.join(root, 'data')):
    try:
      names = sorted(os.listdir(folder))
    except OSError:
      continue
    for name in names:
      path = os.path.join(folder, name)
      if _CASE_RE.match(name) and os.path.isdir(path) and any(
          os.path.exists(os.path.join(path, 'imaging' + ext)) for ext in ('.nii.gz', '.nii')):
        found.append((name, path))
    if found:
      # The official repository keeps cases only in data/; never mix the two places.
      return found
  return found


def is_kits19_layout(root: str | os.PathLike) -> bool:
  """Whether root (or root/data) holds `case_XXXXX/imaging.nii.gz` folders. Never raises."""
  root = os.fspath(root)
  return os.path.isdir(root) and bool(_case_dirs(root))


def find_cases(root: str | os.PathLike) -> list[str]:
  """Sorted names `case_XXXXX` of the cases with an imaging file in root or root/data."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f'{root}: folder not found')
  return sorted(name for name, _ in _case_dirs(root))


def case_dir(root: str | os.PathLike, case: str) -> str:
  """The folder of `case` (root/case or root/data/case)."""
  root = os.fspath(root)
  for folder in (root, os.path.join(root, 'data')):
    path = os.path.join(folder, case)
    if os.path.isdir(path):
      return path
  raise DataError(f'{os.path.join(root, case)}: KiTS19 case folder not found')


def window_ct(hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
  """Clips HU to `window` and maps it linearly to [0, 1]: lo -> 0, hi -> 1, as float32.

  The bounds are the window's, not the volume's min and max, so a given HU value maps to the
  same intensity in every case.
  """
  lo, hi = float(window[0]), float(window[1])
  if not hi > lo:
    raise ConfigError(f'data.kits_window : expected (low, high) with low < high, got {window}')
  x = np.clip(hu.astype(np.float64), lo, hi)
  return ((x - lo) / (hi - lo)).astype(np.float32)


def load_case(case_dir: str | os.PathLike, *, window: tuple[float, float] = DEFAULT_WINDOW,
              require_label: bool = True) -> Volume:
  """Loads one KiTS19 case as a windowed Volume.

  The official KiTS19 NIfTI arrays are stored as (slices, H, W) (github.com/neheller/kits19
  README: shapes are `(num_slices, height, width)`): nibabel's axis 0 is the axial axis. They are kept as stored, (D, H, W) = the array, unlike ACDC which is transposed. The
  spacing is the NIfTI zooms in the same order (slice thickness first); the affine is the
  file's and refers to the same (D, H, W) order, so a prediction of shape (D, H, W) is saved
  untransposed: `nib.Nifti1Image(pred, volume.affine)`.

  Args:
    case_dir: the `case_XXXXX` folder.
    window: (low, high) HU; see `window_ct`.
    require_label: if False, a missing segmentation gives `label=None`.

  Raises:
    DataError: missing or unreadable files, not 3D, label shape or values (0, 1, 2) wrong.
  """
  case_dir = os.fspath(case_dir)
  if not os.path.isdir(case_dir):
    raise DataError(f'{case_dir}: KiTS19 case folder not found')
  image_path = readers.nifti_path(case_dir, 'imaging')
  seg_path = readers.nifti_path(case_dir, 'segmentation')
  hu, affine, zooms = readers.read_nifti(image_path)
  if hu.ndim != 3:
    raise DataError(f'{image_path}: expected a 3D CT volume, got shape {hu.shape}')
  label = None
  if require_label or os.path.exists(seg_path):
    seg, _, _ = readers.read_nifti(seg_path)
    if seg.shape != hu.shape:
      raise DataError(f'{seg_path}: segmentation shape {seg.shape} differs from image shape '
                      f'{hu.shape} of {os.path.basename(image_path)}')
    label = readers.check_label(seg_path, seg, NUM_CLASSES)
  return Volume(
    name=os.path.basename(os.path.normpath(case_dir)),
    image=window_ct(hu, window),
    label=label,
    spacing=(zooms[0], zooms[1], zooms[2]),
    affine=affine,
    path=image_path,
  )


def split_cases(cases: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
  """The paper's 150/20/40 split, as a seeded permutation of the sorted case names.

  `np.random.default_rng(seed).permutation` of the sorted names; the first 150 are training,
  the next 20 validation, the last 40 test. With fewer cases than 210 the counts keep the
  proportions 150:20:40 (val and test rounded half up, at least 1 each; training the rest),
  e.g. 6 cases give 4/1/1. The training list keeps the permuted order, so its first cases
  (the labeled ones) are a random subset; val and test are sorted.

  Raises:
    DataError: fewer than 3 cases, or a name given twice.
  """
  return splits.seeded_split(cases, PAPER_SPLIT, seed, 'KiTS19 split')


def load_kits19(config: ml_collections.ConfigDict) -> SegmentationData:
  """KiTS19 as SegmentationData: the training cases in memory, val/test loaded on access.

  Config: `data.dir`; `data.labeled_fraction` (e.g. 0.025 or 0.1; if absent or 0,
  `data.labeled_num` cases); optional `data.kits_window` (HU, default (-79, 304));
  optional `data.split_seed` (default 0; independent of the training seed so the split stays
  fixed across runs); optional `data.kits_train_size` (default 0 = native 512x512: training
  slices are resized in-plane to this size at load, to cut memory; the 150 training cases take
  about 5 bytes per voxel, some 40 GB at native size, a quarter of that at 256). Every slice is
  kept, including those without kidney, as SSL4MIS does for ACDC. Evaluation volumes stay at
  native size and spacing.
  """
  splits.check_num_classes(config, NUM_CLASSES, 'KiTS19')
  root = config.data.dir
  window = tuple(config.data.get('kits_window', DEFAULT_WINDOW))
  window_ct(np.zeros(1), window)  # checks the window before any file is read
  cases = []
  for case in find_cases(root):
    number = int(_CASE_RE.match(case).group(1))
    folder = case_dir(root, case)
    has_seg = any(os.path.exists(os.path.join(folder, 'segmentation' + ext))
                  for ext in ('.nii.gz', '.nii'))
    if number >= NUM_TRAINING_CASES and not has_seg:
      continue  # a challenge test case: no ground truth to train or evaluate with
    if not has_seg:
      raise DataError(f'{os.path.join(folder, "segmentation.nii.gz")}: segmentation missing '
                      'for a KiTS19 training case')
    cases.append(case)
  if not cases:
    raise DataError(f'{root}: no KiTS19 cases with segmentation.nii.gz found')
  split = split_cases(cases, seed=int(config.data.get('split_seed', 0)))
  train = split['train']
  n_labeled = splits.num_labeled(config, len(train), root)
  train_size = int(config.data.get('kits_train_size', 0))

  def load(case: str) -> Volume:
    return load_case(case_dir(root, case), window=window)

  def load_train(case: str) -> Volume:
    volume = load(case)
    if train_size:
      volume = transforms.resize_volume(volume, train_size, int(config.data.get('image_order', 1)))
    return volume

  labeled = [load_train(c) for c in train[:n_labeled]]
  unlabeled = [load_train(c) for c in train[n_labeled:]]
  return SegmentationData(
    layout='kits19',
    labeled=VolumeSliceSource(labeled, with_label=True),
    unlabeled=VolumeSliceSource(unlabeled, with_label=False),
    splits={'val': LazyVolumes(split['val'], load), 'test': LazyVolumes(split['test'], load)},
    description=(f'KiTS19 at {root}: {n_labeled} labeled cases, {len(train) - n_labeled} '
                 f'unlabeled, {len(split["val"])} validation, {len(split["test"])} test '
                 f'(window {window[0]:g}..{window[1]:g} HU)'))
