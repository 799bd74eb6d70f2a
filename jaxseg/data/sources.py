"""Random-access sources of 2D training slices and of 3D evaluation volumes.

Sources satisfy Grain's RandomAccessDataSource protocol (3D runs: `VolumeSource`, whole volumes) (`__len__`, `__getitem__`) and return
`{'image': float32 (H, W), 'label': uint8 (H, W)}`; unlabeled sources omit 'label'. Files are read
lazily, one per access, and every read is checked (readers.py), so a bad file is named when it
is first touched.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np
import tqdm

from jaxseg.data import readers
from jaxseg.data.volume import Volume
from jaxseg.errors import DataError


class H5SliceSource:
  """SSL4MIS 2D slices `data/slices/<name>.h5`."""

  def __init__(self, paths: Sequence[str], num_classes: int, with_label: bool):
    self.paths = list(paths)
    self.num_classes = num_classes
    self.with_label = with_label

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image, label = readers.read_h5(self.paths[index], num_classes=self.num_classes,
                                   require_label=self.with_label)
    if image.ndim != 2:
      raise DataError(f'{self.paths[index]}: expected a 2D slice, got shape {image.shape}')
    return {'image': image, 'label': label} if self.with_label else {'image': image}


class VolumeSliceSource:
  """Every slice along axis 0 of in-memory volumes (NIfTI layout, synthetic phantom)."""

  def __init__(self, volumes: Sequence[Volume], with_label: bool):
    self.volumes = list(volumes)
    self.with_label = with_label
    self.index = [(v, s) for v, vol in enumerate(self.volumes) for s in range(vol.num_slices)]

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    v, s = self.index[index]
    volume = self.volumes[v]
    element = {'image': volume.image[s]}
    if self.with_label:
      element['label'] = volume.label[s]
    return element


class VolumeSource:
  """Whole in-memory volumes for Grain: `{'image': (D, H, W)}` plus `'label'` when labeled."""

  def __init__(self, volumes: Sequence[Volume], with_label: bool):
    self.volumes = list(volumes)
    self.with_label = with_label

  def __len__(self) -> int:
    return len(self.volumes)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    volume = self.volumes[index]
    element = {'image': volume.image}
    if self.with_label:
      element['label'] = volume.label
    return element


class PseudoLabeledSource:
  """An unlabeled source whose images carry pseudo-labels (self-training).

  `labels[i]` is the (H, W) label map predicted for `source[i]['image']`, at its native size.
  """

  with_label = True

  def __init__(self, source, labels: Sequence[np.ndarray]):
    if len(labels) != len(source):
      raise ValueError(f'{len(labels)} pseudo-labels for {len(source)} images')
    self.source = source
    self.labels = list(labels)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    element = dict(self.source[index])
    if element['image'].shape != self.labels[index].shape:
      raise DataError(f'pseudo-label {index}: shape {self.labels[index].shape} differs from its '
                      f'image {element["image"].shape}')
    element['label'] = self.labels[index]
    return element


class LazyVolumes(Sequence[Volume]):
  """Volumes loaded on access by `load(name)`, so evaluation holds one volume at a time."""

  def __init__(self, names: Sequence[str], load: Callable[[str], Volume]):
    self.names = list(names)
    self._load = load

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    return self._load(self.names[index])


@dataclasses.dataclass
class SegmentationData:
  """What a training run needs from a dataset.

  `splits` maps 'val' (and 'test' when available) to evaluation volumes.
  """

  layout: str
  labeled: H5SliceSource | VolumeSliceSource
  unlabeled: H5SliceSource | VolumeSliceSource
  splits: dict[str, Sequence[Volume]]
  description: str

  def check(self, progress: bool = True) -> None:
    """Reads every file once, so a bad one is named before training starts, not hours into it.

    Training reads slices lazily and in random order; a corrupt slice could otherwise stop a
    run at any step, or never be noticed in a short one. ACDC's 1,312 slices take seconds.
    """
    lazy = [(source, i) for source in (self.labeled, self.unlabeled)
            if isinstance(source, H5SliceSource) for i in range(len(source))]
    lazy += [(volumes, i) for volumes in self.splits.values() if isinstance(volumes, LazyVolumes)
             for i in range(len(volumes))]
    for source, i in tqdm.tqdm(lazy, desc='check data', unit='file', leave=False,
                               disable=not progress or not lazy):
      source[i]


def h5_volume_loader(data_dir: str, num_classes: int) -> Callable[[str], Volume]:
  def load(name: str) -> Volume:
    path = os.path.join(data_dir, 'data', f'{name}.h5')
    image, label = readers.read_h5(path, num_classes=num_classes, require_label=True)
    if image.ndim != 3:
      raise DataError(f'{path}: expected a 3D volume (D, H, W), got shape {image.shape}')
    return Volume(name=name, image=image, label=label, path=path)
  return load
