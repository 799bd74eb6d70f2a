"""Tests for jaxseg.data.splits: labeled subsets, list files, held-out and K-fold splits."""

from __future__ import annotations

import pytest

from jaxseg.data import splits
from jaxseg.errors import ConfigError, DataError


def test_labeled_fraction_bounds():
  assert splits.labeled_subset(['a', 'b', 'c'], 0.01) == ['a']  # at least one
  assert splits.labeled_subset(['a', 'b', 'c'], 1.0) == ['a', 'b', 'c']
  for bad in (0.0, -0.1, 1.5):
    with pytest.raises(ConfigError, match='labeled_fraction'):
      splits.labeled_subset(['a'], bad)


def test_read_list_strips_h5_and_refuses_duplicates(tmp_path):
  path = tmp_path / 'train.list'
  path.write_text('a.h5\n\nb\n')
  assert splits.read_list(str(path)) == ['a', 'b']
  path.write_text('a\na\n')
  with pytest.raises(DataError, match=f'{path}: a case is listed twice'):
    splits.read_list(str(path))
  with pytest.raises(DataError, match='list file is missing'):
    splits.read_list(str(tmp_path / 'none.list'))


def test_k_fold_splits_cover_every_case_once():
  train, test = [f'C{i}' for i in range(8)], ['T0', 'T1']
  validated = []
  for fold in range(3):
    rest, val = splits.holdout_split(train, test, 4, 'train.list', folds=3, fold=fold)
    assert sorted(rest + val) == sorted(train + test) and not set(rest) & set(val)
    validated += val
  assert validated == train + test  # contiguous folds, in list order
  with pytest.raises(DataError, match='data.folds=11'):
    splits.holdout_split(train, test, 4, 'train.list', folds=11)
