"""Tests for jaxseg.data.kits19 on a tiny fixture in the official layout."""

from __future__ import annotations

import gzip
import pathlib

import ml_collections
from conftest import data_config
import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import datasets, kits19, splits
from jaxseg.data.sources import LazyVolumes, SegmentationData
from jaxseg.errors import ConfigError, DataError

# (slices, H, W) as the official KiTS19 files store them.
KITS_SHAPE = (4, 16, 16)
KITS_ZOOMS = (5.0, 0.8, 0.75)


# ---------------------------------------------------------------------------------------------
# Fixtures.


def _kits_affine() -> np.ndarray:
  # KiTS19 style: the slice axis first, in-plane axes flipped.
  return np.array([[0.0, 0.0, -KITS_ZOOMS[2], 10.0],
                   [0.0, -KITS_ZOOMS[1], 0.0, 20.0],
                   [-KITS_ZOOMS[0], 0.0, 0.0, 30.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _kits_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(index)
  hu = rng.integers(-1024, 1500, size=KITS_SHAPE).astype(np.int16)
  seg = np.zeros(KITS_SHAPE, np.uint8)
  seg[1:3, 4:10, 4:10] = 1
  seg[2, 6:8, 6:8] = 2
  return hu, seg


def _save_nifti(array: np.ndarray, path: pathlib.Path) -> None:
  img = nib.Nifti1Image(array, _kits_affine())
  img.header.set_zooms(KITS_ZOOMS)
  nib.save(img, str(path))


def _write_kits(root: pathlib.Path, num_cases: int = 6) -> pathlib.Path:
  for i in range(num_cases):
    case = root / f'case_{i:05d}'
    case.mkdir(parents=True)
    hu, seg = _kits_arrays(i)
    _save_nifti(hu, case / 'imaging.nii.gz')
    _save_nifti(seg, case / 'segmentation.nii.gz')
  return root


def _config(data_dir: pathlib.Path, num_classes: int, **data) -> ml_collections.ConfigDict:
  return data_config(data_dir, num_classes, image_order=0, **data)


@pytest.fixture
def kits_root(tmp_path):
  return _write_kits(tmp_path / 'kits19')


# ---------------------------------------------------------------------------------------------
# KiTS19.


def test_kits_layout_detection(tmp_path, kits_root):
  assert kits19.is_kits19_layout(kits_root)
  assert kits19.find_cases(kits_root) == [f'case_{i:05d}' for i in range(6)]
  # The official repository keeps the cases in data/.
  official = tmp_path / 'repo'
  _write_kits(official / 'data', num_cases=3)
  assert kits19.is_kits19_layout(official)
  assert kits19.find_cases(official) == ['case_00000', 'case_00001', 'case_00002']
  assert not kits19.is_kits19_layout(tmp_path / 'missing')
  (tmp_path / 'crag' / 'train' / 'Images').mkdir(parents=True)
  (tmp_path / 'crag' / 'train' / 'Images' / 'a.png').touch()
  assert not kits19.is_kits19_layout(tmp_path / 'crag')


def test_kits_load_case(kits_root):
  volume = kits19.load_case(kits_root / 'case_00002')
  hu, seg = _kits_arrays(2)
  assert volume.name == 'case_00002'
  assert volume.image.shape == KITS_SHAPE and volume.image.dtype == np.float32
  # Kept as stored: no transpose, window -79..304 mapped to 0..1.
  expected = (np.clip(hu.astype(np.float64), -79, 304) + 79) / 383
  np.testing.assert_allclose(volume.image, expected, atol=1e-6)
  np.testing.assert_array_equal(volume.label, seg)
  assert volume.label.dtype == np.uint8
  np.testing.assert_allclose(volume.spacing, KITS_ZOOMS)
  np.testing.assert_allclose(volume.affine, _kits_affine())
  assert volume.path.endswith('imaging.nii.gz')


def test_kits_bad_label_value_names_file(kits_root):
  hu, seg = _kits_arrays(0)
  seg[0, 0, 0] = 3
  path = kits_root / 'case_00000' / 'segmentation.nii.gz'
  _save_nifti(seg, path)
  with pytest.raises(DataError, match=r'segmentation\.nii\.gz: label values \[3\] outside 0\.\.2'
                     ) as e:
    kits19.load_case(kits_root / 'case_00000')
  assert str(e.value).startswith(str(path))


def test_kits_shape_mismatch_names_file(kits_root):
  path = kits_root / 'case_00001' / 'segmentation.nii.gz'
  _save_nifti(np.zeros((4, 16, 15), np.uint8), path)
  with pytest.raises(DataError, match='differs from image shape') as e:
    kits19.load_case(kits_root / 'case_00001')
  assert str(e.value).startswith(str(path))


def test_kits_corrupt_nifti_names_file(kits_root):
  path = kits_root / 'case_00003' / 'imaging.nii.gz'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])  # truncated download
  with pytest.raises(DataError, match='not a readable NIfTI') as e:
    kits19.load_case(kits_root / 'case_00003')
  assert str(e.value).startswith(str(path))
  path.write_bytes(gzip.compress(b'not a nifti header at all'))
  with pytest.raises(DataError, match='not a readable NIfTI'):
    kits19.load_case(kits_root / 'case_00003')


def test_kits_missing_segmentation(kits_root):
  path = kits_root / 'case_00004' / 'segmentation.nii.gz'
  path.unlink()
  with pytest.raises(DataError, match='file not found') as e:
    kits19.load_case(kits_root / 'case_00004')
  assert str(e.value).startswith(str(path))
  assert kits19.load_case(kits_root / 'case_00004', require_label=False).label is None
  with pytest.raises(DataError, match='segmentation missing'):
    kits19.load(_config(kits_root, 3))


def test_kits_split_paper_proportions():
  cases = [f'case_{i:05d}' for i in range(210)]
  split = kits19.split_cases(cases, seed=0)
  assert {k: len(v) for k, v in split.items()} == {'train': 150, 'val': 20, 'test': 40}
  assert set().union(*map(set, split.values())) == set(cases)
  assert not set(split['train']) & set(split['val'])
  assert not set(split['train']) & set(split['test'])
  assert not set(split['val']) & set(split['test'])
  # Deterministic, independent of input order; another seed gives another split.
  assert kits19.split_cases(list(reversed(cases)), seed=0) == split
  assert kits19.split_cases(cases, seed=1) != split
  assert split['train'] != sorted(split['train'])  # permuted: labeled cases are random
  # The paper's labeled fractions of 150 training cases.
  assert len(splits.labeled_subset(split['train'], 0.025)) == 4
  assert len(splits.labeled_subset(split['train'], 0.10)) == 15
  assert splits.labeled_subset(split['train'], 0.10) == split['train'][:15]


@pytest.mark.parametrize('n, sizes', [(6, (4, 1, 1)), (21, (15, 2, 4)), (3, (1, 1, 1))])
def test_kits_split_fewer_cases(n, sizes):
  split = kits19.split_cases([f'case_{i:05d}' for i in range(n)])
  assert (len(split['train']), len(split['val']), len(split['test'])) == sizes


def test_load_kits19(kits_root):
  data = kits19.load(_config(kits_root, 3, labeled_fraction=0.25))
  assert isinstance(data, SegmentationData) and data.layout == 'kits19'
  split = kits19.split_cases(kits19.find_cases(kits_root))
  # 4 training cases x 4 slices; 25% = 1 labeled case.
  assert len(data.labeled) == 4 and len(data.unlabeled) == 12
  assert [v.name for v in data.labeled.volumes] == split['train'][:1]
  element = data.labeled[0]
  assert element['image'].shape == KITS_SHAPE[1:] and element['image'].dtype == np.float32
  assert 0.0 <= element['image'].min() and element['image'].max() <= 1.0
  assert element['label'].shape == KITS_SHAPE[1:] and element['label'].max() <= 2
  assert set(data.unlabeled[0]) == {'image'}
  for name in ('val', 'test'):
    volumes = data.splits[name]
    assert isinstance(volumes, LazyVolumes) and volumes.names == split[name]
    assert volumes[0].image.shape == KITS_SHAPE and volumes[0].label is not None
  data.check(progress=False)
  # labeled_num when no fraction; a training-size option to cut memory.
  data = kits19.load(_config(kits_root, 3, labeled_num=2, kits19=dict(train_size=8)))
  assert len(data.labeled) == 8 and data.labeled[0]['image'].shape == (8, 8)
  assert data.splits['val'][0].image.shape == KITS_SHAPE  # evaluation stays native
  with pytest.raises(ConfigError, match='num_classes'):
    kits19.load(_config(kits_root, 4))


def test_kits_ignores_unlabeled_challenge_cases(kits_root):
  case = kits_root / 'case_00210'
  case.mkdir()
  _save_nifti(_kits_arrays(0)[0], case / 'imaging.nii.gz')
  assert 'case_00210' in kits19.find_cases(kits_root)
  data = kits19.load(_config(kits_root, 3))
  names = {v.name for v in data.labeled.volumes + data.unlabeled.volumes}
  names |= set(data.splits['val'].names) | set(data.splits['test'].names)
  assert names == {f'case_{i:05d}' for i in range(6)}


def test_load_data_detects_kits19(kits_root):
  kits = datasets.load_data(_config(kits_root, 3, labeled_fraction=0.5))
  assert kits.layout == 'kits19' and len(kits.labeled) > 0 and 'val' in kits.splits


def test_kits_split_needs_three_cases():
  with pytest.raises(DataError, match='KiTS19 split: need at least 3'):
    kits19.split_cases(['a', 'b'])
