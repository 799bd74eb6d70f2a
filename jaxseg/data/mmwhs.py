"""MM-WHS 2017 cardiac CT (whole heart segmentation) in the challenge's file layout.

Layout (MICCAI 2017 MM-WHS challenge, Zhuang et al.): `ct_train_10XX_image.nii.gz` and
`ct_train_10XX_label.nii.gz` for the 20 labeled CT cases 1001..1020, in the data folder itself
or in its `ct_train/` subfolder. The unlabeled `ct_test_*` cases and the MR half (`mr_train_*`)
are not read.

Label values (the challenge's definition) and the class indices given to them, in increasing
value order:
  205 -> 1 MYO  myocardium of the left ventricle
  420 -> 2 LA   left atrium blood cavity
  500 -> 3 LV   left ventricle blood cavity
  550 -> 4 RA   right atrium blood cavity
  600 -> 5 RV   right ventricle blood cavity
  820 -> 6 AA   ascending aorta
  850 -> 7 PA   pulmonary artery
Any other value is an error naming the file and the values (`map_labels`). Hu et al.'s code
has a commented-out mapping in another order (500 -> 1, 600 -> 2, 420 -> 3, 550 -> 4, 205 -> 5,
...); the order changes class indices only, not any per-class or mean Dice.

Preprocessing is Hu et al.'s (MICCAI 2021, section 3), as msd.py's (`readers.read_pair`):
slices along the last NIfTI axis (the axial one, 512x512 in-plane) as Hu's code does, held as
(D, H, W) = (Z, Y, X); min-max normalization of the whole volume; training slices resized
in-plane to 160x160 at load (`data.mmwhs.train_size`): 10 training volumes of about 250 slices
take some 0.3 GB at 160x160 against 3 GB at 512x512. Evaluation volumes stay native, are loaded
one at a time (LazyVolumes) and are resized slice by slice by the evaluation (`eval.patch_size`).
The split is train:val:test = 2:1:1 (10/5/5 cases), a seeded permutation (`data.split_seed`);
the labeled cases are the first `data.labeled_fraction` of the permuted training list (10/20/40%
in Hu's Table 1: 1, 2 and 4 cases).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import SegmentationData
from jaxseg.data.volume import Volume
from jaxseg.errors import DataError

LABEL_VALUES = (205, 420, 500, 550, 600, 820, 850)
CLASS_NAMES = ('MYO', 'LA', 'LV', 'RA', 'RV', 'AA', 'PA')
NUM_CLASSES = 8
# Hu et al.'s split of the volumes, train:val:test (section 3).
PAPER_SPLIT = {'train': 2, 'val': 1, 'test': 1}
# Hu et al.'s in-plane size for MM-WHS.
DEFAULT_TRAIN_SIZE = 160

_IMAGE_RE = re.compile(r'^(ct_train_\d{4})_image(\.nii\.gz|\.nii)$')
# Background and the label values, sorted: a value's position is its class index.
_VALUES = np.array((0,) + LABEL_VALUES, np.float32)
# At most this many unknown values are listed in a message, to keep it one line.
_MAX_LISTED = 10


def find_cases(root: str | os.PathLike) -> dict[str, tuple[str, str]]:
  """{`ct_train_XXXX`: (image path, label path)} in root, or else in root/ct_train; sorted."""
  root = os.fspath(root)
  for folder in (root, os.path.join(root, 'ct_train')):
    try:
      names = sorted(os.listdir(folder))
    except OSError:
      continue
    found = {}
    for name in names:
      m = _IMAGE_RE.match(name)
      if m:
        found[m.group(1)] = (os.path.join(folder, name),
                             os.path.join(folder, f'{m.group(1)}_label{m.group(2)}'))
    if found:
      # One place only, so a stray copy in the other never doubles a case.
      return found
  return {}


def is_mmwhs_layout(root: str | os.PathLike) -> bool:
  """Whether root (or root/ct_train) holds `ct_train_XXXX_image.nii.gz` files. Never raises."""
  root = os.fspath(root)
  return os.path.isdir(root) and bool(find_cases(root))


def map_labels(path: str, label: np.ndarray) -> np.ndarray:
  """MM-WHS label values (0, 205, ..., 850) to class indices 0..7 as uint8.

  Raises:
    DataError: one line naming the file and the values that are not MM-WHS labels.
  """
  out = np.empty(label.shape, np.uint8)
  unknown = []
  # Slice by slice: int64 indices for a whole 512x512x300 CT volume would take 600 MB.
  for i, s in enumerate(label):
    index = np.minimum(np.searchsorted(_VALUES, s), len(_VALUES) - 1)
    wrong = _VALUES[index] != s
    if wrong.any():
      unknown.append(np.unique(s[wrong]))
    out[i] = index
  if unknown:
    values = np.unique(np.concatenate(unknown))
    shown = ', '.join(f'{v:g}' for v in values[:_MAX_LISTED])
    more = f', ... ({len(values)} values)' if len(values) > _MAX_LISTED else ''
    raise DataError(f'{path}: unknown MM-WHS label values [{shown}{more}] (expected 0 and '
                    f'{", ".join(map(str, LABEL_VALUES))})')
  return out


def load_case(image_path: str | os.PathLike, label_path: str | os.PathLike, *,
              require_label: bool = True) -> Volume:
  """Loads one MM-WHS CT case as a (D, H, W) = (Z, Y, X) Volume at native size.

  Image min-max normalized to [0, 1]; label values mapped to 0..7 (`map_labels`). The affine
  is the file's, in nibabel's (X, Y, Z) order (see `readers.read_pair`).

  Raises:
    DataError: missing or unreadable files, not 3D, shape mismatch, unknown label values,
      constant image.
  """
  image_path, label_path = os.fspath(image_path), os.fspath(label_path)
  volume, label = readers.read_pair(image_path, label_path, require_label)
  m = _IMAGE_RE.match(os.path.basename(image_path))
  # Named as the case (`ct_train_1003`), not the image file, like the split lists.
  volume = dataclasses.replace(volume, name=m.group(1) if m else volume.name)
  if label is None:
    return volume
  return dataclasses.replace(volume, label=map_labels(label_path, label))


def split_cases(cases: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
  """Hu et al.'s 2:1:1 split as a seeded permutation of the sorted names (20 cases: 10/5/5)."""
  return splits.seeded_split(cases, PAPER_SPLIT, seed, 'MM-WHS split')


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """MM-WHS CT as SegmentationData: training slices in memory at 160x160, val/test lazy.

  Config: `data.dir`; `data.labeled_fraction` (if absent or 0, `data.labeled_num` cases);
  `data.split_seed` (default 0); `data.mmwhs.train_size` (default 160; 0 keeps the native
  512x512, some 3 GB for 10 cases); `data.image_order` (spline order of the image resize,
  default 1). `num_classes` must be 8.

  Raises:
    DataError: no cases, or a label file missing (checked for every case before any is read).
    ConfigError: num_classes is not 8.
  """
  splits.check_num_classes(config, NUM_CLASSES, 'MM-WHS')
  root = os.fspath(config.data.dir)
  cases = find_cases(root)
  if not cases:
    raise DataError(f'{root}: no MM-WHS CT cases ct_train_XXXX_image.nii.gz found (in the '
                    'folder or its ct_train/ subfolder)')
  for image_path, label_path in cases.values():
    if not os.path.exists(label_path):
      raise DataError(f'{label_path}: file not found (label of {os.path.basename(image_path)})')
  split = split_cases(list(cases), seed=int(config.data.get('split_seed', 0)))

  def load_one(name: str) -> Volume:
    return load_case(*cases[name])

  return spec.load_resized(config, 'mmwhs', split, load_one,
                           int(SPEC.block(config)['train_size']), f'MM-WHS CT at {root}', 'cases')


SPEC = spec.DatasetSpec(
    name='mmwhs', detect=is_mmwhs_layout, load=load, classes=spec.fixed_classes(CLASS_NAMES),
    config={'train_size': DEFAULT_TRAIN_SIZE}, axes=spec.slices_last, normalize=spec.minmax,
    hint='MM-WHS ct_train_XXXX_image.nii.gz')
