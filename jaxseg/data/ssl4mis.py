"""ACDC as SSL4MIS ships it (github.com/HiLab-git/SSL4MIS, data/ACDC): slice and volume h5 files.

Layout: `train_slices.list` (2D training slices `data/slices/<name>.h5`), `val.list` and
optionally `test.list` (volumes `data/<name>.h5`), each h5 holding datasets `image` (already
min-max normalized) and `label`. The labeled slices are those of the first `data.labeled_num`
patients in train_slices.list's order: 3/7/14 patients give SSL4MIS's 68/136/256 slices.
"""

from __future__ import annotations

import functools
import os

import ml_collections

from jaxseg.data import spec, splits
from jaxseg.data.sources import H5SliceSource, LazyVolumes, SegmentationData, h5_volume_loader
from jaxseg.errors import DataError

CLASS_NAMES = ('RV', 'MYO', 'LV')
TRAIN_LIST = 'train_slices.list'


def is_ssl4mis_layout(root: str) -> bool:
  """Whether root holds `train_slices.list`. Never raises."""
  return os.path.exists(os.path.join(root, TRAIN_LIST))


def first_patients(names: list[str], num_patients: int) -> int:
  """How many leading names belong to the first `num_patients` distinct patients."""
  seen = []
  for i, name in enumerate(names):
    patient = name.split('_')[0]
    if patient not in seen:
      if len(seen) == num_patients:
        return i
      seen.append(patient)
  return len(names)


def _slice_path(root: str, name: str) -> str:
  return os.path.join(root, 'data', 'slices', f'{name}.h5')


def _volume_path(root: str, name: str) -> str:
  return os.path.join(root, 'data', f'{name}.h5')


def _evaluation_lists(root: str) -> dict[str, list[str]]:
  """{'val': names, 'test': names when test.list exists}."""
  lists = {'val': splits.read_list(os.path.join(root, 'val.list'))}
  if os.path.exists(os.path.join(root, 'test.list')):
    lists['test'] = splits.read_list(os.path.join(root, 'test.list'))
  return lists


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """The SSL4MIS h5 layout as SegmentationData: slices read on access, volumes too."""
  root = config.data.dir
  slices = splits.read_list(os.path.join(root, TRAIN_LIST))
  paths = [_slice_path(root, name) for name in slices]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise DataError(f'{missing[0]}: listed in {TRAIN_LIST} but missing '
                    f'({len(missing)} listed slice files missing in all)')
  num_patients = len({n.split('_')[0] for n in slices})
  n_patients = splits.num_labeled(config, num_patients, os.path.join(root, TRAIN_LIST))
  n_labeled = first_patients(slices, n_patients)
  lists = _evaluation_lists(root)
  for split, names in lists.items():
    for name in names:
      if not os.path.exists(_volume_path(root, name)):
        raise DataError(f'{_volume_path(root, name)}: listed in {split}.list but missing')
  load_volume = h5_volume_loader(root, config.num_classes)
  return spec.assemble(
      'ssl4mis_h5', paths, n_labeled,
      {split: LazyVolumes(names, load_volume) for split, names in lists.items()},
      f'ACDC (SSL4MIS h5) at {root}: {n_labeled} labeled slices of {n_patients} patients, '
      f'{len(paths) - n_labeled} unlabeled, {len(lists["val"])} validation volumes',
      source=functools.partial(_slices, num_classes=config.num_classes))


def _slices(paths: list[str], with_label: bool, num_classes: int) -> H5SliceSource:
  return H5SliceSource(paths, num_classes, with_label=with_label)


def _slice_item(path: str, num_classes: int) -> spec.Item:
  return spec.Item(path, lambda: H5SliceSource([path], num_classes, with_label=True)[0])


def check(root: str, config) -> spec.Findings:
  """Every listed slice and volume file; unlisted slice files and missing lists noted."""
  found = spec.Findings({'train': []})
  try:
    names = splits.read_list(os.path.join(root, TRAIN_LIST))
  except DataError as e:
    found.problems.append(str(e))
    names = []
  for name in names:
    path = _slice_path(root, name)
    if os.path.exists(path):
      found.items['train'].append(_slice_item(path, config.num_classes))
    else:
      found.problems.append(f'{path}: listed in {TRAIN_LIST} but missing')
  slices_dir = os.path.join(root, 'data', 'slices')
  if os.path.isdir(slices_dir):
    unlisted = sorted({f[:-3] for f in os.listdir(slices_dir) if f.endswith('.h5')} - set(names))
    if unlisted:
      found.warnings.append(f'{slices_dir}: {len(unlisted)} slice files not in {TRAIN_LIST} '
                            f'(not used), e.g. {unlisted[0]}.h5')
  load_volume = h5_volume_loader(root, config.num_classes)
  for split in ('val', 'test'):
    list_path = os.path.join(root, f'{split}.list')
    if split == 'test' and not os.path.exists(list_path):
      continue
    found.items[split] = []
    try:
      names = splits.read_list(list_path)
    except DataError as e:
      found.problems.append(str(e))
      continue
    for name in names:
      path = _volume_path(root, name)
      if os.path.exists(path):
        found.items[split].append(spec.Item(path, lambda name=name: load_volume(name)))
      else:
        found.problems.append(f'{path}: listed in {split}.list but missing')
  return found


SPEC = spec.DatasetSpec(
    name='ssl4mis_h5', detect=is_ssl4mis_layout, load=load, check=check,
    # h5 images are stored normalized; a NIfTI of the same data reads as ACDC's.
    classes=spec.fixed_classes(CLASS_NAMES), hint='the SSL4MIS ACDC layout with train_slices.list')
