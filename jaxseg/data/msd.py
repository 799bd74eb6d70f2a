"""Medical Segmentation Decathlon (MSD) tasks in their official layout, e.g. Task04_Hippocampus.

Layout (medicaldecathlon.com): `dataset.json`, `imagesTr/<case>.nii.gz`, `labelsTr/<case>.nii.gz`
and `imagesTs/` (no labels, ignored). The cases are the `training` list of dataset.json and the
classes its `labels` map ({"0": "background", "1": "Anterior", "2": "Posterior"} for
Hippocampus), so files not listed there are never read: the MSD archives carry macOS `._*`
companions of the NIfTI files that are not images (Hu et al.'s preprocessing deletes files
starting with '.').

Preprocessing follows Hu et al. (MICCAI 2021, section 3; xhu248/semi_cotrast_seg
`datasets/prepare_dataset/preprocessing.py`):
  - slices are taken along the last NIfTI axis, as Hu's code does (`np.stack((image, label))
    .transpose((3, 0, 1, 2))` puts the third nibabel axis first); for Hippocampus that is an
    axis of some 35 voxels, giving about 35 slices of about 35x50 per volume (sizes recalled,
    not measured here). The Volume holds (D, H, W) = (Z, Y, X), the order ACDC uses here; Hu
    keeps (Z, X, Y), i.e. every slice is transposed relative to his, which changes no Dice;
  - min-max normalization of the whole volume to [0, 1] (`readers.minmax_normalize`);
  - training slices resized in-plane to 64x64 at load (`data.msd.train_size`), images by
    `data.image_order` (1, bilinear, in the experiments, as Hu), labels by nearest neighbour
    (Hu resizes labels bilinearly, which invents class values between neighbours);
    evaluation volumes stay native and are resized slice by slice by the evaluation
    (`eval.patch_size`).
The split is train:val:test = 3:1:1 of the volumes (Hu, section 3: 156/52/52 of the 260
cases; Hu's `create_splits.py` splits 50/25/25 instead), a seeded permutation (`split_cases`,
`data.split_seed`; Hu's four folds are four seeds); the labeled volumes are the first
`data.labeled_fraction` of the permuted training list (5/10/20% in Hu's Table 1: 8, 16 and 31
of 156 volumes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import SegmentationData
from jaxseg.data.volume import Volume
from jaxseg.errors import DataError

# Hu et al.'s split of the volumes, train:val:test (section 3).
PAPER_SPLIT = {'train': 3, 'val': 1, 'test': 1}
# Hu et al.'s in-plane size for Hippocampus.
DEFAULT_TRAIN_SIZE = 64


def is_msd_layout(root: str | os.PathLike) -> bool:
  """Whether root holds `dataset.json` and an `imagesTr/` folder. Never raises."""
  root = os.fspath(root)
  return (os.path.isfile(os.path.join(root, 'dataset.json'))
          and os.path.isdir(os.path.join(root, 'imagesTr')))


def read_dataset_json(
    root: str | os.PathLike) -> tuple[tuple[str, ...], dict[str, tuple[str, str]]]:
  """Reads an MSD `dataset.json`.

  Returns:
    (class names in label order, background first; {case name: (image path, label path)} in
    the order of the `training` list, paths resolved against root).

  Raises:
    DataError: one line naming dataset.json: missing, not JSON, `labels` not 0..K-1, `training`
      not a list of {"image", "label"} entries, a case listed twice.
  """
  root = os.fspath(root)
  path = os.path.join(root, 'dataset.json')
  readers.check_file(path)
  try:
    with open(path, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f'{path}: not a readable JSON file: {readers.one_line(e)}') from e
  if not isinstance(meta, dict):
    raise DataError(f'{path}: expected a JSON object, got {type(meta).__name__}')
  labels = meta.get('labels')
  if not isinstance(labels, dict) or not labels:
    raise DataError(f'{path}: no "labels" object mapping label values to class names')
  try:
    values = sorted(int(k) for k in labels)
  except ValueError:
    raise DataError(f'{path}: "labels" keys {sorted(labels)} are not integers') from None
  if values != list(range(len(values))):
    raise DataError(f'{path}: "labels" keys must be 0..{len(values) - 1}, got {values}')
  class_names = tuple(str(labels[k]) for k in sorted(labels, key=int))
  training = meta.get('training')
  if not isinstance(training, list) or not training:
    raise DataError(f'{path}: no "training" list of {{"image", "label"}} entries')
  cases: dict[str, tuple[str, str]] = {}
  for i, entry in enumerate(training):
    if not (isinstance(entry, dict) and isinstance(entry.get('image'), str)
            and isinstance(entry.get('label'), str)):
      raise DataError(f'{path}: "training" entry {i} is not {{"image": ..., "label": ...}}: '
                      f'{entry!r}')
    image = os.path.normpath(os.path.join(root, entry['image']))
    name = readers.case_name(image)
    if name in cases:
      raise DataError(f'{path}: case {name} listed twice in "training"')
    cases[name] = (image, os.path.normpath(os.path.join(root, entry['label'])))
  return class_names, cases


def load_case(image_path: str | os.PathLike, label_path: str | os.PathLike, *, num_classes: int,
              require_label: bool = True) -> Volume:
  """Loads one MSD case as a (D, H, W) = (Z, Y, X) Volume, min-max normalized, native size.

  Raises:
    DataError: missing or unreadable files, not 3D, shape mismatch, label values outside
      0..num_classes-1, constant image.
  """
  image_path, label_path = os.fspath(image_path), os.fspath(label_path)
  volume, label = readers.read_pair(image_path, label_path, require_label)
  if label is None:
    return volume
  label = np.ascontiguousarray(readers.check_label(label_path, label, num_classes))
  return dataclasses.replace(volume, label=label)


def split_cases(cases: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
  """Hu et al.'s 3:1:1 split as a seeded permutation of the sorted names (`splits.seeded_split`).

  260 cases give 156/52/52; val and test are rounded half up, at least 1 each.
  """
  return splits.seeded_split(cases, PAPER_SPLIT, seed, 'MSD split')


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """An MSD task as SegmentationData: training volumes in memory, val/test loaded on access.

  Config: `data.dir` (the task folder holding dataset.json); `data.labeled_fraction` (if
  absent or 0, `data.labeled_num` volumes); `data.split_seed` (default 0);
  `data.msd.train_size` (default 64; 0 keeps the native in-plane size); `data.image_order`
  (spline order of the image resize, default 1). `num_classes` must be the number of entries
  in dataset.json's `labels`.

  Raises:
    DataError: bad dataset.json, or a listed image or label file missing (checked for every
      case before any is read, so a partial download is reported at once).
    ConfigError: num_classes differs from dataset.json.
  """
  root = os.fspath(config.data.dir)
  class_names, cases = read_dataset_json(root)
  splits.check_num_classes(config, len(class_names), f'MSD task at {root}')
  for image_path, label_path in cases.values():
    for path in (image_path, label_path):
      if not os.path.exists(path):
        raise DataError(f'{path}: file not found (listed in '
                        f'{os.path.join(root, "dataset.json")})')
  split = split_cases(list(cases), seed=int(config.data.get('split_seed', 0)))

  def load_one(name: str) -> Volume:
    return load_case(*cases[name], num_classes=len(class_names))

  return spec.load_resized(config, 'msd', split, load_one, int(SPEC.block(config)['train_size']),
                           f'MSD task at {root} ({", ".join(class_names[1:])})', 'volumes')


def classes(config) -> tuple[str, ...]:
  """The task's classes, from its dataset.json (background first)."""
  return read_dataset_json(config.data.dir)[0]


SPEC = spec.DatasetSpec(
    name='msd', detect=is_msd_layout, load=load, classes=classes,
    config={'train_size': DEFAULT_TRAIN_SIZE}, axes=spec.slices_last, normalize=spec.minmax,
    hint='an MSD task with dataset.json and imagesTr/')
