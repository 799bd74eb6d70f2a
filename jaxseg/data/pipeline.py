"""Grain pipelines: a labeled and an unlabeled stream of augmented batches, paired per step.

Each stream is `source -> shuffle (reshuffled every epoch) -> repeat -> random augmentation ->
batch`. Grain derives every random draw from (seed, element index), so a stream is a pure
function of its seed and position: restoring the position restores the rest of the stream.
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections

from jaxseg.data import transforms
from jaxseg.errors import ConfigError


def make_stream(source, transform, *, seed: int, batch_size: int, read_threads: int):
  if len(source) == 0:
    raise ConfigError('a data stream has no images (is --labeled-num all of the training set?)')
  dataset = (grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
             .random_map(transform).batch(batch_size, drop_remainder=True))
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)
  return iter(dataset.to_iter_dataset(read_options))


class PairedIterator:
  """Yields `(labeled_batch, unlabeled_batch)`; the unlabeled batch is None when not needed."""

  def __init__(self, labeled, unlabeled=None):
    self.labeled = labeled
    self.unlabeled = unlabeled

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.labeled), (next(self.unlabeled) if self.unlabeled is not None else None)

  def get_state(self) -> dict[str, Any]:
    state = {'labeled': self.labeled.get_state()}
    if self.unlabeled is not None:
      state['unlabeled'] = self.unlabeled.get_state()
    return state

  def set_state(self, state: dict[str, Any]) -> None:
    self.labeled.set_state(state['labeled'])
    if self.unlabeled is not None:
      self.unlabeled.set_state(state['unlabeled'])


def make_train_iterator(data, config: ml_collections.ConfigDict, with_unlabeled: bool):
  """Labeled batches `{'image', 'label'}` and unlabeled `{'image_weak', 'image_strong'}`."""
  d = config.data
  weak = transforms.WeakAugment(size=d.image_size, rotate_degrees=d.rotate_degrees,
                                crop_size=d.crop_size or None, image_order=d.image_order)
  labeled = make_stream(data.labeled, weak, seed=config.seed, batch_size=d.labeled_batch,
                        read_threads=d.read_threads)
  unlabeled = None
  if with_unlabeled:
    two_views = transforms.TwoViews(size=d.image_size, weak=weak, strong_ops=tuple(d.strong_ops))
    # A different seed, so labeled and unlabeled draws are independent.
    unlabeled = make_stream(data.unlabeled, two_views, seed=config.seed + 1,
                            batch_size=d.unlabeled_batch, read_threads=d.read_threads)
  return PairedIterator(labeled, unlabeled)
