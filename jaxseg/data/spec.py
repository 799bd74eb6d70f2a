"""What a dataset module exports: one `DatasetSpec`, and the one assembly of `SegmentationData`.

Every layout jaxseg reads (jaxseg/data/datasets.py lists them) is one module exporting `SPEC`, a
frozen description used alike by loading (`datasets.load_data`), checking (`data.check`) and
prediction (`jaxseg.predict`): how to recognize the layout, load it, walk its files for the
check, which classes it has, the dataset's own config block (`config.data.<name>`), and how a
NIfTI file's array becomes the network's (D, H, W) input with the training normalization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxseg.data import splits
from jaxseg.data.sources import LazyVolumes, SegmentationData, VolumeSliceSource, VolumeSource
from jaxseg.data.volume import Volume, resized


@dataclasses.dataclass
class Item:
  """One file to read in the check: `load()` gives a Volume (3D) or an {'image', 'label'} slice."""

  path: str
  load: Callable[[], object]


@dataclasses.dataclass
class Findings:
  """What a dataset's `check` found before reading: the files per split, and problems so far.

  `problems` would stop training (one line each, starting with the file); `warnings` are worth
  knowing but harmless.
  """

  items: dict[str, list[Item]]
  problems: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)


def stored_order(zooms: Sequence[float]) -> tuple[int, int, int]:
  """The prediction axes of layouts that keep nibabel's stored order as (D, H, W)."""
  del zooms
  return (0, 1, 2)


def slices_last(zooms: Sequence[float]) -> tuple[int, int, int]:
  """nibabel's (X, Y, Z) as (D, H, W) = (Z, Y, X), SimpleITK's order (ACDC, MSD, MM-WHS)."""
  del zooms
  return (2, 1, 0)


def minmax(image: np.ndarray, config=None) -> np.ndarray:
  """`(x - min) / (max - min)` per volume, as SSL4MIS prepared ACDC; a constant image gives 0."""
  del config
  x = image.astype(np.float64)
  lo, hi = x.min(), x.max()
  return ((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset layout.

  Attributes:
    name: the layout's name (`SegmentationData.layout`, `predict --layout`, the data check) and
      the key of its config block, `config.data.<name>`.
    detect: `(folder) -> bool`, whether the folder holds this layout; never raises. None for
      the built-in phantoms, chosen when `data.dir` is empty.
    load: `(config) -> SegmentationData`.
    classes: `(config) -> class names, background first`; a run on this dataset adopts them
      (`config.num_classes`, `config.class_names`).
    config: the dataset's config block, its defaults (`config.data.<name>`); empty when the
      dataset has no options of its own.
    check: `(folder, config) -> Findings` for `python -m jaxseg.data.check`: the files a run
      reads, item by item, so that the check lists every bad file instead of stopping at the
      first. None: the check walks what `load` returns.
    axes: `(NIfTI zooms) -> permutation` of a stored NIfTI array giving the network's (D, H, W).
    normalize: `(image, config) -> image` in the range the run trained on.
    hint: the layout in a few words, for the message naming the layouts jaxseg knows.
  """

  name: str
  detect: Callable[[str], bool] | None
  load: Callable[[Any], SegmentationData]
  classes: Callable[[Any], tuple[str, ...]]
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[str, Any], Findings] | None = None
  axes: Callable[[Sequence[float]], tuple[int, int, int]] = slices_last
  normalize: Callable[[np.ndarray, Any], np.ndarray] = minmax
  hint: str = ''

  def block(self, config) -> Mapping[str, Any]:
    """This dataset's block of `config` (its defaults where the config has none)."""
    return {**self.config, **config.data.get(self.name, {})}


def fixed_classes(names: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
  """`classes` of a dataset whose classes never change: background plus `names`."""
  return lambda config: ('background',) + tuple(names)


def assemble(layout: str, train: Sequence[Any], n_labeled: int,
             evaluation: Mapping[str, Sequence[Volume]], description: str, *,
             source: Callable[[list, bool], Any] = VolumeSliceSource) -> SegmentationData:
  """The one assembly of a run's data: the first `n_labeled` training items labeled, the rest
  unlabeled, each side wrapped by `source` (2D slices of volumes by default; `VolumeSource` for
  3D crops, `H5SliceSource` for slice files); `evaluation` maps 'val' (and 'test') to volumes."""
  return SegmentationData(
      layout=layout,
      labeled=source(list(train[:n_labeled]), True),
      unlabeled=source(list(train[n_labeled:]), False),
      splits=dict(evaluation),
      description=description)


def training_source(config) -> Callable[[list, bool], Any]:
  """Whole volumes for 3D runs (`data.crop_shape` set), their slices for 2D runs."""
  return VolumeSource if config.data.get('crop_shape', ()) else VolumeSliceSource


def lazy_splits(names: Mapping[str, Sequence[str]], load: Callable[[str], Volume],
                keys: Sequence[str] = ('val', 'test')) -> dict[str, LazyVolumes]:
  """Evaluation splits read on access, one volume at a time."""
  return {key: LazyVolumes(names[key], load) for key in keys if key in names}


def load_resized(config, name: str, split: dict[str, list[str]], load_one: Callable[[str], Volume],
                 train_size: int, title: str, unit: str) -> SegmentationData:
  """Volume-level splits whose training slices are resized in-plane to `train_size` at load (0:
  native; Hu et al.'s protocol, MSD and MM-WHS); val and test read on access at native size."""
  train = split['train']
  n_labeled = splits.num_labeled(config, len(train), config.data.dir)
  load_train = resized(load_one, train_size, int(config.data.get('image_order', 1)))
  size = f'{train_size}x{train_size}' if train_size else 'native size'
  return assemble(
      name, [load_train(c) for c in train], n_labeled, lazy_splits(split, load_one),
      f'{title}: {n_labeled} labeled {unit}, {len(train) - n_labeled} unlabeled, '
      f'{len(split["val"])} validation, {len(split["test"])} test (training slices at {size})')
