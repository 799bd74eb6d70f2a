"""NIH Pancreas-CT (Roth et al. 2015) from NIfTI, preprocessed as Karimijafarbigloo et al. describe.

Layout (the usual NIfTI conversion of the TCIA release; the labels ship as NIfTI already):
`<root>/image/PANCREAS_XXXX.nii.gz` and `<root>/label/labelXXXX.nii.gz` (XXXX the same 4-digit
case number), optional case lists `<root>/train.list` and `<root>/test.list` of `PANCREAS_XXXX`
names. Without train.list every case with a label is a training case in number order. Split
rules as LA (la.py): labeled = first `data.labeled_num` training cases (12 of 62 in the paper),
validation = test.list, or without it the last `data.holdout_num` training cases.

Preprocessing (paper, section 3; MC-Net/DTC): HU clipped to `data.pancreas.window` (-120..240)
and mapped linearly to [0, 1] by the window bounds; the volume cropped to the bounding box of the
pancreas label expanded by `data.pancreas.margin` (25) voxels per side, clamped to the volume.
As in the authors' code the crop uses the label, for every case including the evaluation ones
(a known optimistic bias of this protocol: the test volume is already centred on the organ).

Axis order: kept as nibabel returns it, (x, y, z) with the axial slices last, like LA; spacing
is the NIfTI zooms in that order and the affine is shifted to the crop, so
`nib.Nifti1Image(pred, volume.affine)` saves a prediction in place. Crops are 96^3 and the
sliding window 96^3 with stride 16^3, so the order does not change the protocol. Training
volumes are read and cropped once at load.
"""

from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import LazyVolumes, SegmentationData, VolumeSource
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError

NUM_CLASSES = 2
CLASS_NAMES = ('pancreas',)
DEFAULT_WINDOW = (-120.0, 240.0)
DEFAULT_MARGIN = 25

_IMAGE_RE = re.compile(r'^PANCREAS_(\d{4})\.nii(\.gz)?$')


def is_pancreas_layout(root: str | os.PathLike) -> bool:
  """Whether root/image holds PANCREAS_XXXX.nii(.gz) files and root/label exists. Never raises."""
  root = os.fspath(root)
  try:
    names = os.listdir(os.path.join(root, 'image'))
  except OSError:
    return False
  return os.path.isdir(os.path.join(root, 'label')) and any(_IMAGE_RE.match(n) for n in names)


def find_cases(root: str) -> list[str]:
  """Sorted `PANCREAS_XXXX` names of the images in root/image."""
  folder = os.path.join(root, 'image')
  try:
    names = os.listdir(folder)
  except OSError:
    raise DataError(f'{folder}: folder not found') from None
  return sorted({f'PANCREAS_{m.group(1)}' for n in names if (m := _IMAGE_RE.match(n))})


def case_paths(root: str, case: str) -> tuple[str, str]:
  """(image, label) paths of `PANCREAS_XXXX` (.nii.gz names when neither form exists)."""
  number = case.split('_')[-1]
  return (readers.nifti_path(os.path.join(root, 'image'), case),
          readers.nifti_path(os.path.join(root, 'label'), f'label{number}'))


def crop_box(label: np.ndarray, margin: int, path: str) -> tuple[slice, ...]:
  """The foreground bounding box expanded by `margin` voxels per side, clamped to the volume."""
  found = np.nonzero(label)
  if not found[0].size:
    raise DataError(f'{path}: label has no pancreas voxels; cannot crop around the pancreas')
  return tuple(slice(max(int(idx.min()) - margin, 0), min(int(idx.max()) + margin + 1, size))
               for idx, size in zip(found, label.shape))


def load_case(image_path: str, label_path: str, *, window=DEFAULT_WINDOW,
              margin: int = DEFAULT_MARGIN, name: str = '') -> Volume:
  """One case windowed to [0, 1] and cropped around the pancreas (see the module docstring)."""
  if margin < 0:
    raise ConfigError(f'data.pancreas.margin: must be >= 0, got {margin}')
  hu, affine, zooms = readers.read_nifti(image_path)
  if hu.ndim != 3:
    raise DataError(f'{image_path}: expected a 3D CT volume, got shape {hu.shape}')
  seg = readers.read_nifti_label(label_path, hu.shape, image_path)
  label = readers.check_label(label_path, seg, NUM_CLASSES)
  box = crop_box(label, margin, label_path)
  affine = affine.copy()
  affine[:3, 3] += affine[:3, :3] @ np.array([b.start for b in box], np.float64)
  return Volume(
      name=name or os.path.basename(image_path).split('.')[0],
      image=np.ascontiguousarray(readers.window_ct(hu[box], window, 'data.pancreas.window')),
      label=np.ascontiguousarray(label[box]),
      spacing=(zooms[0], zooms[1], zooms[2]),
      affine=affine,
      path=image_path)


def _window(config) -> tuple[float, float]:
  window = tuple(float(v) for v in SPEC.block(config)['window'])
  if len(window) != 2 or not window[1] > window[0]:
    raise ConfigError(f'data.pancreas.window: expected (low, high) HU with low < high, '
                      f'got {window}')
  return window


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """NIH Pancreas-CT as SegmentationData (see the module docstring)."""
  splits.check_num_classes(config, NUM_CLASSES, 'Pancreas')
  root = config.data.dir
  window, margin = _window(config), int(SPEC.block(config)['margin'])
  train_list = os.path.join(root, 'train.list')
  test_list = os.path.join(root, 'test.list')
  train = splits.read_list(train_list) if os.path.exists(train_list) else find_cases(root)
  test = splits.read_list(test_list) if os.path.exists(test_list) else None
  for case in train + (test or []):
    for path in case_paths(root, case):
      if not os.path.isfile(path):
        raise DataError(f'{path}: missing (case {case})')
  train, val, val_from = splits.held_out(config, train, test, root)
  n_labeled = splits.num_labeled(config, len(train) - 1, root)

  def load_one(case: str) -> Volume:
    return load_case(*case_paths(root, case), window=window, margin=margin, name=case)

  return spec.assemble(
      'pancreas', splits.load_all(train, load_one, config.data.read_threads), n_labeled,
      {'val': LazyVolumes(val, load_one)},
      f'NIH Pancreas-CT at {root}: {n_labeled} labeled cases, {len(train) - n_labeled} '
      f'unlabeled, {len(val)} validation ({val_from}); window {window[0]:g}..{window[1]:g} HU, '
      f'margin {margin} voxels',
      source=VolumeSource)


def normalize(image: np.ndarray, config) -> np.ndarray:
  """The run's `data.pancreas.window` (HU) mapped to [0, 1], as `load` does (prediction)."""
  return readers.window_ct(image, _window(config), 'data.pancreas.window')


SPEC = spec.DatasetSpec(
    name='pancreas', detect=is_pancreas_layout, load=load,
    classes=spec.fixed_classes(CLASS_NAMES),
    config={'window': DEFAULT_WINDOW, 'margin': DEFAULT_MARGIN},
    axes=spec.stored_order, normalize=normalize,
    hint='Pancreas image/PANCREAS_XXXX.nii.gz')
