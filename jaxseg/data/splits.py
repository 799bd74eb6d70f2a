"""Train/val/test splits and labeled subsets: case lists, seeded splits, held-out validation."""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from jaxseg.data.volume import Volume
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


def read_list(path: str) -> list[str]:
  """Non-empty, stripped lines of a case list (a trailing `.h5` is dropped)."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: list file is missing')
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise DataError(f'{path}: list file is empty')
  if len(set(names)) != len(names):
    raise DataError(f'{path}: a case is listed twice')
  return [n[:-3] if n.endswith('.h5') else n for n in names]


def holdout_split(train: Sequence[str], test: Sequence[str] | None, holdout_num: int,
                  what: str, folds: int = 0, fold: int = 0) -> tuple[list[str], list[str]]:
  """(training cases, validation cases): test.list when given, else the last `holdout_num`.

  With `folds` = K > 0 (K-fold cross-validation, `python -m jaxseg.run --folds K`): every case
  of train.list and test.list, in list order, cut into K contiguous folds; fold `fold`
  validates and the others train (their first cases labeled, as usual).
  """
  if folds:
    cases = list(train) + list(test or [])
    if not 1 < folds <= len(cases) or not 0 <= fold < folds:
      raise DataError(f'{what}: data.folds={folds}, data.fold={fold}: need 2 <= folds <= '
                      f'{len(cases)} cases and 0 <= fold < folds')
    bounds = [round(i * len(cases) / folds) for i in range(folds + 1)]
    val = cases[bounds[fold]:bounds[fold + 1]]
    return cases[:bounds[fold]] + cases[bounds[fold + 1]:], val
  if test:
    return list(train), list(test)
  if not 0 < holdout_num < len(train):
    raise DataError(f'{what}: no test.list, and data.holdout_num={holdout_num} must be between '
                    f'1 and {len(train) - 1} to hold out validation cases')
  return list(train[:-holdout_num]), list(train[-holdout_num:])


def load_all(names: Sequence[str], load: Callable[[str], Volume], threads: int) -> list[Volume]:
  """`load` over names in threads (h5/gzip reads release the GIL), in order."""
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    return list(pool.map(load, names))


def held_out(config: ml_collections.ConfigDict, train: Sequence[str], test: Sequence[str] | None,
             what: str) -> tuple[list[str], list[str], str]:
  """(training cases, validation cases, where validation comes from) by `holdout_split` and the
  config's `data.holdout_num`, `data.folds`, `data.fold` (LA, pancreas)."""
  d = config.data
  train, val = holdout_split(train, test, int(d.holdout_num), what, int(d.folds), int(d.fold))
  if d.folds:
    return train, val, f'fold {d.fold + 1} of {d.folds}'
  return train, val, 'test.list' if test else f'the last {len(val)} training cases'
