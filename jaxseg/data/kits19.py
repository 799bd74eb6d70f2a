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
    linearly to [0, 1] by the window bounds (`readers.window_ct`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import SegmentationData
from jaxseg.data.volume import Volume, resized
from jaxseg.errors import DataError

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


def load_case(case_dir: str | os.PathLike, *, window: tuple[float, float] = DEFAULT_WINDOW,
              require_label: bool = True) -> Volume:
  """Loads one KiTS19 case as a windowed Volume.

  The official KiTS19 NIfTI arrays are stored as (slices, H, W) (github.com/neheller/kits19
  README: shapes are `(num_slices, height, width)`): nibabel's axis 0 is the axial axis. They
  are kept as stored, (D, H, W) = the array, unlike ACDC which is transposed. The
  spacing is the NIfTI zooms in the same order (slice thickness first); the affine is the
  file's and refers to the same (D, H, W) order, so a prediction of shape (D, H, W) is saved
  untransposed: `nib.Nifti1Image(pred, volume.affine)`.

  Args:
    case_dir: the `case_XXXXX` folder.
    window: (low, high) HU; see `readers.window_ct`.
    require_label: if False, a missing segmentation gives `label=None`.

  Raises:
    DataError: missing or unreadable files, not 3D, label shape or values (0, 1, 2) wrong.
  """
  case_dir = os.fspath(case_dir)
  if not os.path.isdir(case_dir):
    raise DataError(f'{case_dir}: KiTS19 case folder not found')
  image_path = readers.nifti_path(case_dir, 'imaging')
  seg_path = readers.nifti_path(case_dir, 'segmentation')
  hu, affine, zooms, seg = readers.read_volume_and_label(image_path, seg_path, require_label,
                                                        'CT volume')
  label = None if seg is None else readers.check_label(seg_path, seg, NUM_CLASSES)
  return Volume(
    name=os.path.basename(os.path.normpath(case_dir)),
    image=readers.window_ct(hu, window, 'data.kits19.window'),
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


def training_cases(root: str) -> tuple[list[str], list[str]]:
  """(the cases with a segmentation, problems): a case from 210 on without one is a challenge
  test case and is left out; a training case without one is a problem (one line, the file)."""
  cases, problems = [], []
  for case in find_cases(root):
    folder = case_dir(root, case)
    if os.path.exists(readers.nifti_path(folder, 'segmentation')):
      cases.append(case)
    elif int(_CASE_RE.match(case).group(1)) < NUM_TRAINING_CASES:
      problems.append(f'{os.path.join(folder, "segmentation.nii.gz")}: segmentation missing '
                      'for a KiTS19 training case')
  if not cases:
    problems.append(f'{root}: no KiTS19 cases with segmentation.nii.gz found')
  return cases, problems


def _window(config) -> tuple[float, float]:
  window = tuple(SPEC.block(config)['window'])
  readers.window_ct(np.zeros(1), window, 'data.kits19.window')  # checks it before any read
  return window


def _split(root: str, config) -> tuple[dict[str, list[str]], list[str]]:
  cases, problems = training_cases(root)
  split = split_cases(cases, seed=int(config.data.get('split_seed', 0))) if cases else {}
  return split, problems


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """KiTS19 as SegmentationData: the training cases in memory, val/test loaded on access.

  Config: `data.dir`; `data.labeled_fraction` (e.g. 0.025 or 0.1; if absent or 0,
  `data.labeled_num` cases); `data.kits19.window` (HU, default (-79, 304));
  `data.split_seed` (default 0; independent of the training seed so the split stays fixed
  across runs); `data.kits19.train_size` (default 0 = native 512x512: training slices are
  resized in-plane to this size at load, to cut memory; the 150 training cases take about 5
  bytes per voxel, some 40 GB at native size, a quarter of that at 256). Every slice is kept,
  including those without kidney, as SSL4MIS does for ACDC. Evaluation volumes stay at
  native size and spacing.
  """
  splits.check_num_classes(config, NUM_CLASSES, 'KiTS19')
  root = config.data.dir
  window = _window(config)
  split, problems = _split(root, config)
  if problems:
    raise DataError(problems[0])
  n_labeled = splits.num_labeled(config, len(split['train']), root)

  def load_one(case: str) -> Volume:
    return load_case(case_dir(root, case), window=window)

  load_train = resized(load_one, int(SPEC.block(config)['train_size']),
                                  int(config.data.get('image_order', 1)))
  return spec.assemble(
      'kits19', [load_train(c) for c in split['train']], n_labeled,
      spec.lazy_splits(split, load_one),
      f'KiTS19 at {root}: {n_labeled} labeled cases, {len(split["train"]) - n_labeled} '
      f'unlabeled, {len(split["val"])} validation, {len(split["test"])} test '
      f'(window {window[0]:g}..{window[1]:g} HU)')


def check(root: str, config) -> spec.Findings:
  """Every case of the split, windowed as training does; missing segmentations noted."""
  split, problems = _split(root, config)
  window = _window(config)
  return spec.Findings(
      {name: [spec.Item(case_dir(root, c),
                        lambda c=c: load_case(case_dir(root, c), window=window)) for c in cases]
       for name, cases in split.items()}, problems)


def normalize(image: np.ndarray, config) -> np.ndarray:
  """The run's `data.kits19.window` (HU) mapped to [0, 1], as `load` does (prediction)."""
  return readers.window_ct(image, _window(config), 'data.kits19.window')


SPEC = spec.DatasetSpec(
    name='kits19', detect=is_kits19_layout, load=load, classes=spec.fixed_classes(CLASS_NAMES),
    config={'window': DEFAULT_WINDOW, 'train_size': 0}, check=check,
    axes=spec.stored_order, normalize=normalize,
    hint='KiTS19 case_XXXXX/imaging.nii.gz')
