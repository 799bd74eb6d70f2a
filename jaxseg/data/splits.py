"""Train/val/test splits and labeled subsets for datasets whose papers publish no case lists."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from jaxseg.errors import ConfigError, DataError


def round_half_up(x: float) -> int:
  # Python's round() rounds halves to even; half-up is the rule a reader expects from "round".
  return int(math.floor(x + 0.5))


def seeded_split(names: Sequence[str], proportions: Mapping[str, int], seed: int,
                 what: str) -> dict[str, list[str]]:
  """Splits names train/val/test in the given proportions by a seeded permutation.

  `np.random.default_rng(seed).permutation` of the sorted names; val and test get their share
  rounded half up (at least 1 each), training the rest. The training list keeps the permuted
  order, so its first names (the labeled ones) are a random subset; val and test are sorted.
  """
  names = sorted(names)
  if len(set(names)) != len(names):
    raise DataError(f'{what}: duplicate names in {names}')
  if len(names) < 3:
    raise DataError(f'{what}: need at least 3 items for train/val/test, got {len(names)}')
  total = sum(proportions.values())
  n_val = max(1, round_half_up(len(names) * proportions['val'] / total))
  n_test = max(1, round_half_up(len(names) * proportions['test'] / total))
  n_train = len(names) - n_val - n_test
  order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
  return {'train': order[:n_train],
          'val': sorted(order[n_train:n_train + n_val]),
          'test': sorted(order[n_train + n_val:])}


def labeled_subset(train: Sequence[str], fraction: float) -> list[str]:
  """The first round(fraction x len(train)) training names (half up, at least 1)."""
  if not 0.0 < fraction <= 1.0:
    raise ConfigError(f'data.labeled_fraction : must be in (0, 1], got {fraction}')
  n = min(len(train), max(1, round_half_up(fraction * len(train))))
  return list(train[:n])


def num_labeled(config: ml_collections.ConfigDict, num_train: int, what: str) -> int:
  """How many training items are labeled: `data.labeled_fraction` if set (> 0), else
  `data.labeled_num` items."""
  fraction = config.data.get('labeled_fraction', None)
  if fraction:
    return len(labeled_subset(range(num_train), float(fraction)))
  n = int(config.data.labeled_num)
  if not 0 < n <= num_train:
    raise DataError(f'{what}: --labeled-num {n} must be between 1 and {num_train}')
  return n


def check_num_classes(config: ml_collections.ConfigDict, expected: int, dataset: str) -> None:
  if config.num_classes != expected:
    raise ConfigError(f'num_classes : {dataset} has {expected} classes (background included), '
                      f'the config says {config.num_classes}')
