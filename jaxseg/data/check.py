"""Checks a dataset folder before training: `python -m jaxseg.data.check --data-dir PATH`.

Detects the layout as training does (`datasets.detect_layout`), reads every file a run would
read, and reports per split the counts, shapes, voxel spacings, intensity ranges and label
values, then every problem by file name. Unlike training, which stops at the first bad file,
the check goes on and lists them all. Exit status 0 when the data would train, 2 when a problem
would stop training (a missing, unreadable or inconsistent file, a label outside 0..K-1).

Known layouts are walked file by file (their loaders read eagerly and stop at the first error);
a layout this module does not know yet is checked through `datasets.load_data` and its sources,
item by item.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
from typing import Callable

import numpy as np

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import datasets, readers
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError, JaxsegError

_MAX_SHAPES = 4  # distinct shapes listed before switching to per-axis ranges


@dataclasses.dataclass
class Item:
  """One file to read: `load()` returns a Volume (3D) or an {'image', 'label'} slice (2D)."""

  path: str
  load: Callable[[], object]


@dataclasses.dataclass
class SplitStats:
  """What was read of one split."""

  kind: str = 'files'
  count: int = 0
  shapes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  spacings: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  low: float = np.inf
  high: float = -np.inf
  labels: set = dataclasses.field(default_factory=set)
  unlabeled: int = 0

  def add(self, image: np.ndarray, label: np.ndarray | None, spacing) -> None:
    self.count += 1
    self.shapes[tuple(int(s) for s in image.shape)] += 1
    if spacing is not None:
      self.spacings[tuple(round(float(s), 3) for s in spacing)] += 1
    self.low, self.high = min(self.low, float(image.min())), max(self.high, float(image.max()))
    if label is None:
      self.unlabeled += 1
    else:
      self.labels.update(int(v) for v in np.unique(label))

  def describe(self) -> str:
    if not self.count:
      return f'0 {self.kind} readable'
    parts = [f'{self.count} {self.kind}', 'shapes ' + _shapes(self.shapes)]
    if self.spacings:
      parts.append('spacing ' + _shapes(self.spacings, unit=' mm'))
    parts.append(f'intensity {self.low:.4g}..{self.high:.4g}')
    if self.labels:
      parts.append(f'label values {sorted(self.labels)}')
    if self.unlabeled:
      parts.append(f'{self.unlabeled} without label')
    return '; '.join(parts)


def _shapes(counter: collections.Counter, unit: str = '') -> str:
  """`(10, 256, 216) x3, (8, 232, 256) x2`, or per-axis ranges when there are many."""
  if len(counter) <= _MAX_SHAPES:
    return ', '.join(f'{tuple(k)}{unit}' + (f' x{n}' if n > 1 else '')
                     for k, n in counter.most_common())
  keys = np.array([k for k in counter if len(k) == len(next(iter(counter)))])
  ranges = ' x '.join(f'{lo:g}..{hi:g}' for lo, hi in zip(keys.min(0), keys.max(0)))
  return f'{ranges}{unit} ({len(counter)} distinct)'


@dataclasses.dataclass
class CheckResult:
  data_dir: str
  layout: str
  num_classes: int
  splits: dict[str, SplitStats]
  problems: list[str]  # one line each, starting with the file; any of them stops training
  warnings: list[str]  # worth knowing, harmless to training


# --- layouts --------------------------------------------------------------------------------


def _slice_item(path: str, num_classes: int) -> Item:
  def load():
    image, label = readers.read_h5(path, num_classes=num_classes, require_label=True)
    if image.ndim != 2:
      raise DataError(f'{path}: expected a 2D slice, got shape {image.shape}')
    return {'image': image, 'label': label}
  return Item(path, load)


def _read_list(path: str, problems: list[str], warnings: list[str]) -> list[str]:
  if not os.path.exists(path):
    problems.append(f'{path}: list file is missing')
    return []
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    problems.append(f'{path}: list file is empty')
  duplicates = [n for n, c in collections.Counter(names).items() if c > 1]
  if duplicates:
    warnings.append(f'{path}: {len(duplicates)} names listed twice, e.g. {duplicates[0]}')
  return [n[:-3] if n.endswith('.h5') else n for n in names]


def _ssl4mis_h5(root: str, num_classes: int, problems, warnings) -> dict[str, list[Item]]:
  from jaxseg.data.sources import h5_volume_loader  # noqa: PLC0415
  items: dict[str, list[Item]] = {}
  list_path = os.path.join(root, 'train_slices.list')
  names = _read_list(list_path, problems, warnings)
  items['train'] = []
  for name in names:
    path = os.path.join(root, 'data', 'slices', f'{name}.h5')
    if os.path.exists(path):
      items['train'].append(_slice_item(path, num_classes))
    else:
      problems.append(f'{path}: listed in train_slices.list but missing')
  slices_dir = os.path.join(root, 'data', 'slices')
  if os.path.isdir(slices_dir):
    unlisted = sorted(set(f[:-3] for f in os.listdir(slices_dir) if f.endswith('.h5')) - set(names))
    if unlisted:
      warnings.append(f'{slices_dir}: {len(unlisted)} slice files not in train_slices.list '
                      f'(not used), e.g. {unlisted[0]}.h5')
  load = h5_volume_loader(root, num_classes)
  for split in ('val', 'test'):
    list_path = os.path.join(root, f'{split}.list')
    if split == 'test' and not os.path.exists(list_path):
      continue
    items[split] = []
    for name in _read_list(list_path, problems, warnings):
      path = os.path.join(root, 'data', f'{name}.h5')
      if os.path.exists(path):
        items[split].append(Item(path, lambda name=name: load(name)))
      else:
        problems.append(f'{path}: listed in {split}.list but missing')
  return items


def _acdc_nifti(root: str, num_classes: int, problems, warnings) -> dict[str, list[Item]]:
  try:
    patient_dirs = readers.find_acdc_patient_dirs(root)
  except DataError as e:
    problems.append(str(e))
    return {}
  items: dict[str, list[Item]] = {}
  for split, patients in readers.SSL4MIS_ACDC_SPLIT.items():
    present = [p for p in patients if p in patient_dirs]
    if len(present) < len(patients):
      missing = [p for p in patients if p not in patient_dirs]
      note = f'{root}: {len(missing)} of the {len(patients)} SSL4MIS {split} patients absent'
      if split in ('train', 'val') and not present:
        problems.append(note + ' (all of them; training needs some)')
      else:
        warnings.append(note + f', e.g. {missing[0]}')
    items[split] = [
        Item(os.path.join(patient_dirs[p], f'{p} frame {f}'),
             lambda p=p, f=f: readers.load_acdc_nifti_volume(patient_dirs[p], f,
                                                            num_classes=num_classes))
        for p in present for f in (1, 2)]
  known = set(readers.TRAIN_PATIENTS + readers.VAL_PATIENTS + readers.TEST_PATIENTS)
  extra = sorted(set(patient_dirs) - known)
  if extra:
    warnings.append(f'{root}: {len(extra)} patient folders outside the SSL4MIS split (not used), '
                    f'e.g. {extra[0]}')
  return items


def _kits19(root: str, config, problems, warnings) -> dict[str, list[Item]]:
  from jaxseg.data import kits19  # noqa: PLC0415
  cases = []
  for case in kits19.find_cases(root):
    folder = kits19.case_dir(root, case)
    has_seg = any(os.path.exists(os.path.join(folder, 'segmentation' + e))
                  for e in ('.nii.gz', '.nii'))
    if has_seg:
      cases.append(case)
    elif int(case.split('_')[1]) < kits19.NUM_TRAINING_CASES:
      problems.append(f'{os.path.join(folder, "segmentation.nii.gz")}: segmentation missing for '
                      'a KiTS19 training case')
  if not cases:
    problems.append(f'{root}: no KiTS19 cases with segmentation.nii.gz found')
    return {}
  window = tuple(config.data.get('kits_window', kits19.DEFAULT_WINDOW))
  split = kits19.split_cases(cases, seed=int(config.data.get('split_seed', 0)))
  return {name: [Item(kits19.case_dir(root, c),
                      lambda c=c: kits19.load_case(kits19.case_dir(root, c), window=window))
                 for c in names] for name, names in split.items()}


def _crag(root: str, config, problems, warnings) -> dict[str, list[Item]]:
  from jaxseg.data import crag  # noqa: PLC0415
  paths = crag.find_images(root)
  split = crag.split_images(list(paths), seed=int(config.data.get('split_seed', 0)))
  channels = int(config.data.get('crag_channels', 1))
  return {name: [Item(paths[n], lambda n=n: crag.load_image(paths[n], channels=channels))
                 for n in names] for name, names in split.items()}


def _generic(config, problems, warnings) -> dict[str, list[Item]]:
  """Any layout `load_data` knows: its training sources and split volumes, item by item."""
  from jaxseg.data.sources import H5SliceSource, LazyVolumes, VolumeSliceSource  # noqa: PLC0415
  try:
    data = datasets.load_data(config)
  except JaxsegError as e:
    problems.append(str(e))
    return {}
  items: dict[str, list[Item]] = {'train': []}
  for source in (data.labeled, data.unlabeled):
    if isinstance(source, H5SliceSource):
      items['train'] += [_slice_item(p, config.num_classes) for p in source.paths]
    elif isinstance(source, VolumeSliceSource):
      items['train'] += [Item(v.path or v.name, lambda v=v: v) for v in source.volumes]
    else:
      items['train'] += [Item(f'{data.layout} item {i}', lambda s=source, i=i: s[i])
                         for i in range(len(source))]
  for split, volumes in data.splits.items():
    names = volumes.names if isinstance(volumes, LazyVolumes) else [
        v.name for v in volumes]
    items[split] = [Item(f'{split} volume {n}', lambda vs=volumes, i=i: vs[i])
                    for i, n in enumerate(names)]
  return items


# Labels of these layouts are fixed by the dataset; others take --num-classes or the experiment.
def _known_num_classes(layout: str) -> int | None:
  if layout in ('ssl4mis_h5', 'acdc_nifti'):
    return 4
  if layout in ('kits19', 'crag'):
    module = __import__(f'jaxseg.data.{layout}', fromlist=['NUM_CLASSES'])
    return module.NUM_CLASSES
  return None


# --- the check ------------------------------------------------------------------------------


def check_data(data_dir: str, *, num_classes: int | None = None, experiment: str | None = None,
               progress: bool = False) -> CheckResult:
  """Reads every file of `data_dir` a run would read; returns statistics and problems.

  Raises:
    DataError: the folder is missing or its layout unknown (nothing could be checked).
  """
  import tqdm  # noqa: PLC0415
  layout = datasets.detect_layout(data_dir)
  if layout == 'synthetic':
    raise DataError('--data-dir: empty; give the dataset folder to check')
  config = (config_lib.load_experiment(experiment, 'paper') if experiment
            else config_lib.base_config())
  with config.unlocked():
    config.data.dir = os.path.abspath(data_dir)
    config.data.labeled_num = 1  # any split of labeled/unlabeled reads the same files
    config.data.labeled_fraction = 0.0
    config.num_classes = (num_classes or (config.num_classes if experiment else None)
                          or _known_num_classes(layout) or config.num_classes)
  problems: list[str] = []
  warnings: list[str] = []
  root = config.data.dir
  if layout == 'ssl4mis_h5':
    items = _ssl4mis_h5(root, config.num_classes, problems, warnings)
  elif layout == 'acdc_nifti':
    items = _acdc_nifti(root, config.num_classes, problems, warnings)
  elif layout == 'kits19':
    items = _kits19(root, config, problems, warnings)
  elif layout == 'crag':
    items = _crag(root, config, problems, warnings)
  else:
    items = _generic(config, problems, warnings)

  stats = {split: SplitStats() for split in items}
  todo = [(split, item) for split, split_items in items.items() for item in split_items]
  for split, item in tqdm.tqdm(todo, desc='check', unit='file', leave=False,
                               disable=not progress or not todo):
    try:
      read = item.load()
    except (DataError, ConfigError) as e:
      problems.append(str(e))
      continue
    if isinstance(read, Volume):
      stats[split].kind = 'volumes'
      stats[split].add(read.image, read.label, read.spacing)
    else:
      stats[split].kind = 'slices'
      stats[split].add(read['image'], read.get('label'), None)
  for split, s in stats.items():
    absent = sorted(set(range(1, config.num_classes)) - s.labels)
    if s.count and s.count > s.unlabeled and absent:
      warnings.append(f'{root}: {split} split has no voxel of class(es) {absent}')
  return CheckResult(root, layout, config.num_classes, stats, problems, warnings)


def format_result(result: CheckResult) -> str:
  lines = [f'{result.data_dir}: layout {result.layout}, {result.num_classes} classes '
           '(background included)']
  for split, s in result.splits.items():
    lines.append(f'  {split}: {s.describe()}')
  if result.warnings:
    lines += ['warnings:'] + [f'  {w}' for w in result.warnings]
  if result.problems:
    lines += [f'problems ({len(result.problems)}, each would stop training):']
    lines += [f'  {p}' for p in result.problems]
  else:
    lines.append('no problems found')
  return '\n'.join(lines)


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.parser('jaxseg.data.check', __doc__)
  parser.add_argument('--data-dir', required=True, help='dataset folder')
  parser.add_argument('--num-classes', type=int,
                      help='classes including background (default: the layout\'s own)')
  parser.add_argument('--experiment', help="take num_classes and data options from this "
                      "experiment's paper config")
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(argv)
  if args.num_classes is not None and not 2 <= args.num_classes <= 256:
    raise ConfigError(f'--num-classes {args.num_classes}: must be in 2..256')
  result = check_data(args.data_dir, num_classes=args.num_classes, experiment=args.experiment,
                      progress=not args.no_progress)
  print(format_result(result))
  if result.problems:
    raise DataError(f'{len(result.problems)} problem(s) in {result.data_dir} would stop training '
                    '(listed above)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
