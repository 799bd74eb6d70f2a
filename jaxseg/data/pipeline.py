"""Grain pipelines: a labeled and an unlabeled stream of augmented batches, paired per step.

Each stream is `source -> shuffle (reshuffled every epoch) -> repeat -> random augmentation ->
batch`. Grain derives every random draw from (seed, element index), so a stream is a pure
function of its seed and position: restoring the position restores the rest of the stream.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
import ml_collections

from jaxseg.data import transforms, transforms3d
from jaxseg.errors import ConfigError


def make_stream(source, transform, *, seed: int, batch_size: int, read_threads: int,
                rows: Sequence[int] | None = None):
  """A stream of batches of `batch_size`; with `rows` (several processes), only those rows of
  every global batch, read and augmented by this process alone."""
  if len(source) == 0:
    raise ConfigError('a data stream has no images (is --labeled-num all of the training set?)')
  dataset = (grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
             .random_map(transform))
  if rows is not None:
    dataset = BatchRows(dataset, batch_size, rows)
  dataset = dataset.batch(len(rows) if rows is not None else batch_size, drop_remainder=True)
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)
  return iter(dataset.to_iter_dataset(read_options))


class BatchRows(grain.MapDataset):
  """The elements at `rows` of every consecutive group of `batch_size`: one process's part of
  every global batch.

  Every process builds the same global sequence (same seed, same shuffle, augmentation drawn
  from the global element index) and keeps its rows, so the global batches, and the losses,
  are those of one process whatever the process count. (Sharding the dataset by process,
  grain's `ShardByJaxProcess`, gives each process its own shuffled sequence instead: the
  global batches would change with the process count.)
  """

  def __init__(self, parent: grain.MapDataset, batch_size: int, rows: Sequence[int]):
    super().__init__(parent)
    self._batch_size, self._rows = batch_size, tuple(rows)

  def __len__(self) -> int:
    return len(self._parent) // self._batch_size * len(self._rows)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    group, row = divmod(index, len(self._rows))
    return self._parent[group * self._batch_size + self._rows[row]]


class PairedIterator:
  """Yields `(labeled_batch, unlabeled_batch)`; a batch is None when its stream is not needed."""

  def __init__(self, labeled, unlabeled=None):
    self.labeled = labeled
    self.unlabeled = unlabeled

  def __iter__(self):
    return self

  def _streams(self):
    return {name: stream for name, stream in (('labeled', self.labeled),
                                               ('unlabeled', self.unlabeled)) if stream is not None}

  def __next__(self):
    return (next(self.labeled) if self.labeled is not None else None,
            next(self.unlabeled) if self.unlabeled is not None else None)

  def get_state(self) -> dict[str, Any]:
    return {name: stream.get_state() for name, stream in self._streams().items()}

  def set_state(self, state: dict[str, Any]) -> None:
    for name, stream in self._streams().items():
      stream.set_state(state[name])


class ConcatSource:
  """Several random-access sources read as one (e.g. every training image for global contrast)."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.offsets = [0]
    for source in self.sources:
      self.offsets.append(self.offsets[-1] + len(source))

  def __len__(self) -> int:
    return self.offsets[-1]

  def __getitem__(self, index: int):
    for source, start, stop in zip(self.sources, self.offsets, self.offsets[1:]):
      if start <= index < stop:
        return source[index - start]
    raise IndexError(index)


LABELED_VIEWS = ('single', 'twin')
UNLABELED_SOURCES = ('unlabeled', 'all')
UNLABELED_VIEWS = ('shared', 'independent')


def _make_3d_iterator(data, config, with_unlabeled: bool, with_labeled: bool, rows):
  """3D runs: UA-MT's rot90/flip and random crop of whole volumes (transforms3d.py), with the
  keys of the 2D streams, so the step is the same."""
  d = config.data
  labeled = unlabeled = None
  if with_labeled:
    labeled = make_stream(data.labeled, transforms3d.Crop3D(d.crop_shape, d.rot_flip),
                          seed=config.seed, batch_size=d.labeled_batch,
                          read_threads=d.read_threads, rows=rows(d.labeled_batch))
  if with_unlabeled:
    two_views = transforms3d.TwoViews3D(d.crop_shape, d.rot_flip, d.strong_noise)
    unlabeled = make_stream(data.unlabeled, two_views, seed=config.seed + 1,
                            batch_size=d.unlabeled_batch, read_threads=d.read_threads,
                            rows=rows(d.unlabeled_batch))
  return PairedIterator(labeled, unlabeled)


def make_train_iterator(data, config: ml_collections.ConfigDict, with_unlabeled: bool,
                        with_labeled: bool = True,
                        local_rows: Callable[[int], Sequence[int] | None] | None = None):
  """Labeled batches `{'image', 'label'}` (plus `'image_twin'` with `data.labeled_views='twin'`)
  and unlabeled `{'image_weak', 'image_strong'}` (plus `'label'` when the unlabeled source
  carries pseudo-labels); a stream a run does not use is not built. With several processes,
  `local_rows(batch_size)` names the rows of each global batch this process reads."""
  d = config.data
  rows = local_rows or (lambda batch_size: None)
  for key, value, known in (('labeled_views', d.labeled_views, LABELED_VIEWS),
                            ('unlabeled_source', d.unlabeled_source, UNLABELED_SOURCES),
                            ('unlabeled_views', d.unlabeled_views, UNLABELED_VIEWS)):
    if value not in known:
      raise ConfigError(f'data.{key}: unknown {value!r}; known: {", ".join(known)}')
  if d.get('crop_shape', ()):
    return _make_3d_iterator(data, config, with_unlabeled, with_labeled, rows)
  weak = transforms.WeakAugment(size=d.image_size, rotate_degrees=d.rotate_degrees,
                                crop_size=d.crop_size or None, image_order=d.image_order)
  labeled = None
  if with_labeled:
    transform = weak
    if d.labeled_views == 'twin':
      transform = transforms.LabeledTwin(weak, strong_ops=tuple(d.twin_ops))
    labeled = make_stream(data.labeled, transform, seed=config.seed, batch_size=d.labeled_batch,
                          read_threads=d.read_threads, rows=rows(d.labeled_batch))
  unlabeled = None
  if with_unlabeled:
    source = data.unlabeled
    if d.unlabeled_source == 'all':
      source = ConcatSource([data.labeled, data.unlabeled])
    # Pseudo-labels (self-training) travel with their images; labels of the labeled part of an
    # 'all' source are dropped (global contrast uses no labels).
    keep_label = bool(getattr(source, 'with_label', False))
    two_views = transforms.TwoViews(size=d.image_size, weak=weak, strong_ops=tuple(d.strong_ops),
                                    keep_label=keep_label,
                                    independent=d.unlabeled_views == 'independent')
    # A different seed, so labeled and unlabeled draws are independent.
    unlabeled = make_stream(source, two_views, seed=config.seed + 1,
                            batch_size=d.unlabeled_batch, read_threads=d.read_threads,
                            rows=rows(d.unlabeled_batch))
  return PairedIterator(labeled, unlabeled)
