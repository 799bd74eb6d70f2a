"""Users' own data in the nnU-Net raw layout (nnU-Net v2, Isensee et al., Nature Methods 2021).

Layout (github.com/MIC-DKFZ/nnUNet, documentation/dataset_format.md):
  DatasetXXX_Name/dataset.json
  DatasetXXX_Name/imagesTr/{case}_0000.nii.gz   one file per input channel: _0000, _0001, ...
  DatasetXXX_Name/labelsTr/{case}.nii.gz        integer labels
  DatasetXXX_Name/imagesTs/{case}_0000.nii.gz   optional, unlabeled (`python -m jaxseg.predict`)
  DatasetXXX_Name/splits_final.json             optional: nnU-Net's folds (also `splits.json`)
`dataset.json` holds `channel_names` ({"0": "T2", ...}), `labels` (name -> integer value,
"background": 0, values 0..K-1), `numTraining` and `file_ending` (".nii.gz" or ".nii" here).
A run adopts the classes of `labels` (num_classes = K, class_names in value order).

Choices (BUILD_NOTES.md, "Datasets as one table; the nnU-Net raw layout"):
  - axis order: the lowest-resolution axis (largest voxel spacing; on a tie the last one) is
    put first, the other two keep their stored order: (D, H, W). A 2D run (no
    `data.crop_shape`) trains on slices along D, as nnU-Net's 2D configuration does; a 3D run
    on crops of `data.crop_shape` in that same order. Prediction reads a file the same way and
    writes the labels back in the file's own order and geometry;
  - intensities: per volume, clipped to its 0.5 and 99.5 percentiles and mapped to [0, 1] (the
    augmentations and the other datasets work in [0, 1]; nnU-Net's z-score would not);
  - split: `splits_final.json` (or `splits.json`) when present, fold `data.fold`; otherwise a
    seeded permutation (`data.split_seed`) holding out `data.nnunet.val_fraction` of the cases
    for validation. The labeled cases are the first `data.labeled_fraction` (or
    `data.labeled_num`) of the training list; the rest train unlabeled;
  - channels: jaxseg's networks take one input channel. A one-channel dataset trains as it is;
    with several, `data.nnunet.channel` names the one to train on (the others are still
    checked by `data.check`), and no choice is an error naming the channels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import LazyVolumes, SegmentationData
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError

DATASET_JSON = 'dataset.json'
SPLIT_FILES = ('splits_final.json', 'splits.json')
FILE_ENDINGS = ('.nii.gz', '.nii')
# Percentiles of a volume's intensities mapped to 0 and 1 (see the module docstring).
PERCENTILES = (0.5, 99.5)
# Geometry of channels and label must agree to this tolerance (mm, direction cosines).
AFFINE_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Meta:
  """What dataset.json says."""

  path: str
  channels: tuple[str, ...]  # channel names in index order
  class_names: tuple[str, ...]  # in label value order, background first
  num_training: int
  file_ending: str


def _fail(path: str, message: str) -> DataError:
  return DataError(f'{path}: {message}')


def read_dataset_json(root: str) -> Meta:
  """Reads and checks `root/dataset.json`; one-line DataError naming the file otherwise."""
  path = os.path.join(os.fspath(root), DATASET_JSON)
  readers.check_file(path)
  try:
    with open(path, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _fail(path, f'not a readable JSON file: {readers.one_line(e)}') from e
  if not isinstance(meta, dict):
    raise _fail(path, f'expected a JSON object, got {type(meta).__name__}')
  channels = meta.get('channel_names', meta.get('modality'))
  if not isinstance(channels, dict) or not channels:
    raise _fail(path, 'no "channel_names" object ({"0": "T2", ...})')
  if sorted(channels, key=str) != [str(i) for i in range(len(channels))]:
    raise _fail(path, f'"channel_names" keys must be "0".."{len(channels) - 1}", got '
                f'{sorted(channels)}')
  labels = meta.get('labels')
  if not isinstance(labels, dict) or not labels:
    raise _fail(path, 'no "labels" object mapping class names to values ({"background": 0, ...})')
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
    raise _fail(path, '"labels" values must be integers (region-based labels, lists of values, '
                'are not supported)')
  by_value = sorted(labels.items(), key=lambda kv: kv[1])
  values = [v for _, v in by_value]
  if values != list(range(len(values))):
    raise _fail(path, f'"labels" values must be 0..{len(values) - 1}, each once, got {values}')
  num_training = meta.get('numTraining')
  if not isinstance(num_training, int) or num_training < 1:
    raise _fail(path, f'"numTraining" must be a positive integer, got {num_training!r}')
  ending = meta.get('file_ending', '.nii.gz')
  if ending not in FILE_ENDINGS:
    raise _fail(path, f'"file_ending" {ending!r}: jaxseg reads {" and ".join(FILE_ENDINGS)}')
  return Meta(path, tuple(str(channels[str(i)]) for i in range(len(channels))),
              tuple(str(name) for name, _ in by_value), num_training, ending)


def is_nnunet_layout(root: str | os.PathLike) -> bool:
  """Whether root holds imagesTr/ and a dataset.json with "channel_names". Never raises."""
  root = os.fspath(root)
  if not os.path.isdir(os.path.join(root, 'imagesTr')):
    return False
  try:
    with open(os.path.join(root, DATASET_JSON), encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return False
  # MSD's dataset.json says "modality" and lists "training" instead.
  return isinstance(meta, dict) and 'channel_names' in meta


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  images: tuple[str, ...]  # one path per channel, in channel order
  label: str


def find_cases(root: str, meta: Meta) -> tuple[dict[str, Case], list[str]]:
  """({case: Case} sorted, problems): a missing channel file or label is a problem naming the
  file; so is a numTraining that differs from the cases found."""
  pattern = re.compile(r'^(.+)_(\d{4})' + re.escape(meta.file_ending) + '$')
  folder = os.path.join(root, 'imagesTr')
  found: dict[str, set[int]] = {}
  for name in sorted(os.listdir(folder)):
    m = pattern.match(name)
    if m:
      found.setdefault(m.group(1), set()).add(int(m.group(2)))
  cases, problems = {}, []
  for case, channels in sorted(found.items()):
    images = tuple(os.path.join(folder, f'{case}_{c:04d}{meta.file_ending}')
                   for c in range(len(meta.channels)))
    label = os.path.join(root, 'labelsTr', f'{case}{meta.file_ending}')
    missing = [(c, p) for c, p in enumerate(images) if c not in channels]
    extra = sorted(c for c in channels if c >= len(meta.channels))
    problems += [f'{p}: missing (channel {c:04d} of case {case}; dataset.json lists '
                 f'{len(meta.channels)} channels)' for c, p in missing]
    if extra:
      problems.append(f'{images[0]}: case {case} has channel files {extra} beyond the '
                      f'{len(meta.channels)} of dataset.json')
    if not os.path.isfile(label):
      problems.append(f'{label}: missing (label of case {case})')
    if not missing and not extra and os.path.isfile(label):
      cases[case] = Case(case, images, label)
  if not found:
    problems.append(f'{folder}: no images {{case}}_0000{meta.file_ending}')
  elif len(found) != meta.num_training:
    problems.append(f'{meta.path}: "numTraining" is {meta.num_training}, imagesTr holds '
                    f'{len(found)} cases')
  return cases, problems


def slice_axes(zooms) -> tuple[int, int, int]:
  """The lowest-resolution axis (largest spacing, the last on a tie) first, the others in order."""
  zooms = tuple(zooms)[:3]
  first = max(range(3), key=lambda i: (zooms[i], i))
  return (first,) + tuple(i for i in range(3) if i != first)


def normalize(image: np.ndarray, config=None) -> np.ndarray:
  """Clipped to the volume's 0.5 and 99.5 percentiles and mapped to [0, 1]; constant gives 0."""
  del config
  lo, hi = np.percentile(image, PERCENTILES)
  if not hi > lo:
    lo, hi = float(image.min()), float(image.max())
  if not hi > lo:
    return np.zeros(image.shape, np.float32)
  return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _read_3d(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
  data, affine, zooms = readers.read_nifti(path)
  if data.ndim != 3:
    raise DataError(f'{path}: expected a 3D image (one file per channel), got shape {data.shape}')
  return data, affine, zooms


def _same_geometry(path: str, shape, affine, label_path: str, label_shape, label_affine) -> None:
  if tuple(shape) != tuple(label_shape):
    raise DataError(f'{path}: shape {tuple(shape)} differs from its label '
                    f'{os.path.basename(label_path)} {tuple(label_shape)}')
  if not np.allclose(affine, label_affine, atol=AFFINE_TOLERANCE):
    raise DataError(f'{path}: affine differs from its label {os.path.basename(label_path)} '
                    f'(origin {np.round(affine[:3, 3], 3).tolist()} vs '
                    f'{np.round(label_affine[:3, 3], 3).tolist()}, or spacing or direction)')


def load_case(case: Case, *, channel: int, num_classes: int, meta_path: str,
              all_channels: bool = False) -> Volume:
  """One case as a (D, H, W) Volume of channel `channel` (see `slice_axes`, `normalize`).

  With `all_channels` every channel file is read and its geometry compared with the label's
  (the data check); training reads the one it uses.

  Raises:
    DataError: unreadable file, not 3D, a channel's shape or affine differs from the label's,
      label values not in dataset.json.
  """
  label, label_affine, _ = _read_3d(case.label)
  image = None
  for c, path in enumerate(case.images):
    if c != channel and not all_channels:
      continue
    data, affine, zooms = _read_3d(path)
    _same_geometry(path, data.shape, affine, case.label, label.shape, label_affine)
    if c == channel:
      image, image_affine, image_zooms = data, affine, zooms
  values = np.unique(label)
  unknown = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
  if unknown.size:
    raise DataError(f'{case.label}: label values {readers.format_values(unknown)} not in '
                    f'{os.path.basename(meta_path)} "labels" (0..{num_classes - 1})')
  axes = slice_axes(image_zooms)
  return Volume(
      name=case.name,
      image=np.ascontiguousarray(normalize(image).transpose(axes)),
      label=np.ascontiguousarray(label.astype(np.uint8).transpose(axes)),
      spacing=tuple(float(image_zooms[a]) for a in axes),
      affine=image_affine,
      path=case.images[channel])


def choose_channel(meta: Meta, config) -> int:
  """The input channel a run trains on (see the module docstring)."""
  channel = int(SPEC.block(config)['channel'])
  names = ', '.join(f'{i} {n}' for i, n in enumerate(meta.channels))
  if channel < 0 and len(meta.channels) > 1:
    raise ConfigError(f'{meta.path}: {len(meta.channels)} input channels ({names}); jaxseg\'s '
                      'networks take one: choose it with --set data.nnunet.channel=N')
  channel = max(channel, 0)
  if channel >= len(meta.channels):
    raise ConfigError(f'data.nnunet.channel={channel}: {meta.path} has channels {names}')
  return channel


def split_cases(root: str, names: list[str], config) -> tuple[dict[str, list[str]], str]:
  """({'train', 'val'} case lists, where they come from): nnU-Net's splits file when present,
  fold `data.fold`; else a seeded permutation holding out `data.nnunet.val_fraction`."""
  for file in SPLIT_FILES:
    path = os.path.join(root, file)
    if os.path.isfile(path):
      fold = int(config.data.get('fold', 0))
      return _split_from_file(path, names, fold), f'{file} fold {fold}'
  fraction = float(SPEC.block(config)['val_fraction'])
  if not 0.0 < fraction < 1.0:
    raise ConfigError(f'data.nnunet.val_fraction={fraction}: must be in (0, 1)')
  if len(names) < 2:
    raise DataError(f'{root}: need at least 2 labeled cases to hold out validation, got '
                    f'{len(names)}')
  n_val = min(len(names) - 1, max(1, splits.round_half_up(len(names) * fraction)))
  seed = int(config.data.get('split_seed', 0))
  order = [sorted(names)[i] for i in np.random.default_rng(seed).permutation(len(names))]
  return ({'train': order[n_val:], 'val': sorted(order[:n_val])},
          f'{n_val} of {len(names)} cases by split seed {seed}')


def _split_from_file(path: str, names: list[str], fold: int) -> dict[str, list[str]]:
  try:
    with open(path, encoding='utf-8') as f:
      folds = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f'{path}: not a readable JSON file: {readers.one_line(e)}') from e
  if not (isinstance(folds, list) and folds and all(
      isinstance(s, dict) and isinstance(s.get('train'), list) and isinstance(s.get('val'), list)
      for s in folds)):
    raise DataError(f'{path}: expected a list of folds {{"train": [...], "val": [...]}}')
  if not 0 <= fold < len(folds):
    raise ConfigError(f'data.fold={fold}: {path} has folds 0..{len(folds) - 1}')
  split = {key: list(folds[fold][key]) for key in ('train', 'val')}
  unknown = sorted(set(split['train'] + split['val']) - set(names))
  if unknown:
    raise DataError(f'{path}: fold {fold} names cases not in imagesTr/labelsTr: '
                    f'{", ".join(unknown[:5])}')
  if not split['train'] or not split['val']:
    raise DataError(f'{path}: fold {fold} has an empty train or val list')
  return split


def _cases(root: str) -> tuple[Meta, dict[str, Case]]:
  meta = read_dataset_json(root)
  cases, problems = find_cases(root, meta)
  if problems:
    more = f' ({len(problems)} problems; python -m jaxseg.data.check lists all)' if len(
        problems) > 1 else ''
    raise DataError(problems[0] + more)
  return meta, cases


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """An nnU-Net raw dataset as SegmentationData: 2D slices, or 3D volumes with
  `data.crop_shape`; training cases read at load, validation on access."""
  root = os.fspath(config.data.dir)
  meta, cases = _cases(root)
  splits.check_num_classes(config, len(meta.class_names), meta.path)
  channel = choose_channel(meta, config)
  split, split_from = split_cases(root, list(cases), config)
  n_labeled = splits.num_labeled(config, len(split['train']), root)

  def load_one(name: str) -> Volume:
    return load_case(cases[name], channel=channel, num_classes=len(meta.class_names),
                     meta_path=meta.path)

  train = splits.load_all(split['train'], load_one, config.data.read_threads)
  dims = '3D crops' if config.data.get('crop_shape', ()) else '2D slices'
  return spec.assemble(
      'nnunet', train, n_labeled, {'val': LazyVolumes(split['val'], load_one)},
      f'nnU-Net raw dataset at {root} (channel {channel} {meta.channels[channel]}; '
      f'{", ".join(meta.class_names[1:])}): {n_labeled} labeled cases, '
      f'{len(train) - n_labeled} unlabeled, {len(split["val"])} validation ({split_from}); '
      f'{dims}', source=spec.training_source(config))


def check(root: str, config) -> spec.Findings:
  """Every case with all its channels (shape and affine against the label), the label values
  against dataset.json, missing files and numTraining."""
  try:
    meta = read_dataset_json(root)
  except DataError as e:
    return spec.Findings({}, [str(e)])
  cases, problems = find_cases(root, meta)
  found = spec.Findings({}, problems)
  channel = max(0, min(int(SPEC.block(config)['channel']), len(meta.channels) - 1))
  if len(meta.channels) > 1 and int(SPEC.block(config)['channel']) < 0:
    found.warnings.append(f'{meta.path}: {len(meta.channels)} channels; training needs '
                          '--set data.nnunet.channel=N (one channel)')
  try:
    split, _ = split_cases(root, list(cases), config) if len(cases) > 1 else (
        {'train': list(cases)}, '')
  except (DataError, ConfigError) as e:
    found.problems.append(str(e))
    split = {'train': list(cases)}
  for name, names in split.items():
    found.items[name] = [
        spec.Item(cases[c].label, lambda c=c: load_case(
            cases[c], channel=channel, num_classes=len(meta.class_names), meta_path=meta.path,
            all_channels=True)) for c in names]
  return found


def classes(config) -> tuple[str, ...]:
  """dataset.json's classes in label value order, background first."""
  return read_dataset_json(config.data.dir).class_names


SPEC = spec.DatasetSpec(
    name='nnunet', detect=is_nnunet_layout, load=load, classes=classes,
    config={'channel': -1, 'val_fraction': 0.2}, check=check,
    axes=slice_axes, normalize=normalize,
    hint='the nnU-Net raw layout DatasetXXX_Name/ with dataset.json, imagesTr/, labelsTr/')
