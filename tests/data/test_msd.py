"""Tests for jaxseg.data.msd (Hippocampus) and jaxseg.data.mmwhs on tiny fixtures in the
official file formats."""

from __future__ import annotations

import gzip
import json
import pathlib

import ml_collections
from conftest import data_config
import nibabel as nib
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.data import datasets, mmwhs, msd, readers, splits
from jaxseg.data.sources import LazyVolumes, SegmentationData
from jaxseg.errors import ConfigError, DataError

# nibabel (X, Y, Z) order, as the files store them; the Volume holds (Z, Y, X).
HIPPO_SHAPE = (9, 12, 5)
HIPPO_ZOOMS = (1.0, 1.0, 1.5)
CT_SHAPE = (16, 14, 6)
CT_ZOOMS = (0.4, 0.4, 0.6)
NUM_HIPPO = 10  # 3:1:1 -> 6/2/2
NUM_CT = 8  # 2:1:1 -> 4/2/2


# ---------------------------------------------------------------------------------------------
# Fixtures.


def _save_nifti(array: np.ndarray, path: pathlib.Path, zooms) -> None:
  img = nib.Nifti1Image(array, np.diag(list(zooms) + [1.0]))
  img.header.set_zooms(zooms)
  nib.save(img, str(path))


def _hippo_arrays(index: int, shape=HIPPO_SHAPE) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(index)
  image = rng.integers(20, 900, size=shape).astype(np.int16)
  label = np.zeros(shape, np.uint8)
  label[2:6, 3:8, 1:4] = 1
  label[4:7, 6:10, 2:4] = 2
  return image, label


def _write_msd(root: pathlib.Path, num_cases: int = NUM_HIPPO) -> pathlib.Path:
  for folder in ('imagesTr', 'labelsTr', 'imagesTs'):
    (root / folder).mkdir(parents=True)
  training = []
  for i in range(num_cases):
    name = f'hippocampus_{i + 1:03d}.nii.gz'
    image, label = _hippo_arrays(i)
    _save_nifti(image, root / 'imagesTr' / name, HIPPO_ZOOMS)
    _save_nifti(label, root / 'labelsTr' / name, HIPPO_ZOOMS)
    training.append({'image': f'./imagesTr/{name}', 'label': f'./labelsTr/{name}'})
    # The MSD archives carry macOS companions that are not NIfTI files.
    (root / 'imagesTr' / f'._{name}').write_bytes(b'\x00\x05\x16\x07 AppleDouble')
  _save_nifti(_hippo_arrays(99)[0], root / 'imagesTs' / 'hippocampus_999.nii.gz', HIPPO_ZOOMS)
  meta = {'name': 'Hippocampus', 'labels': {'0': 'background', '1': 'Anterior',
                                            '2': 'Posterior'},
          'numTraining': num_cases, 'training': training,
          'test': ['./imagesTs/hippocampus_999.nii.gz']}
  (root / 'dataset.json').write_text(json.dumps(meta))
  return root


def _ct_arrays(index: int, shape=CT_SHAPE) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(100 + index)
  image = rng.integers(-1024, 2000, size=shape).astype(np.int16)
  label = np.zeros(shape, np.int16)
  # Every structure present, on its own block of voxels.
  for k, value in enumerate(mmwhs.LABEL_VALUES):
    label[2 * k:2 * k + 2, 2:10, 1:5] = value
  return image, label


def _write_mmwhs(root: pathlib.Path, num_cases: int = NUM_CT, sub: str = 'ct_train'
                 ) -> pathlib.Path:
  folder = root / sub if sub else root
  folder.mkdir(parents=True)
  for i in range(num_cases):
    image, label = _ct_arrays(i)
    _save_nifti(image, folder / f'ct_train_{1001 + i}_image.nii.gz', CT_ZOOMS)
    _save_nifti(label, folder / f'ct_train_{1001 + i}_label.nii.gz', CT_ZOOMS)
  # An unlabeled challenge test case, never read.
  _save_nifti(_ct_arrays(50)[0], folder / 'ct_test_2001_image.nii.gz', CT_ZOOMS)
  return root


def _config(data_dir: pathlib.Path, num_classes: int, **data) -> ml_collections.ConfigDict:
  return data_config(data_dir, num_classes, image_order=1, **data)


def _minmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  return (x - x.min()) / (x.max() - x.min())


@pytest.fixture
def hippo_root(tmp_path):
  return _write_msd(tmp_path / 'Task04_Hippocampus')


@pytest.fixture
def ct_root(tmp_path):
  return _write_mmwhs(tmp_path / 'MMWHS')


# ---------------------------------------------------------------------------------------------
# Layout detection and splits.


def test_layout_detection(tmp_path, hippo_root, ct_root):
  assert msd.is_msd_layout(hippo_root) and not mmwhs.is_mmwhs_layout(hippo_root)
  assert mmwhs.is_mmwhs_layout(ct_root) and not msd.is_msd_layout(ct_root)
  assert datasets.detect_layout(str(hippo_root)) == 'msd'
  assert datasets.detect_layout(str(ct_root)) == 'mmwhs'
  # The cases directly in the data folder, not in ct_train/.
  flat = _write_mmwhs(tmp_path / 'flat', num_cases=3, sub='')
  assert datasets.detect_layout(str(flat)) == 'mmwhs'
  assert list(mmwhs.find_cases(flat)) == ['ct_train_1001', 'ct_train_1002', 'ct_train_1003']
  assert list(mmwhs.find_cases(ct_root)) == [f'ct_train_{1001 + i}' for i in range(NUM_CT)]
  for missing in (tmp_path / 'missing', tmp_path):
    assert not msd.is_msd_layout(missing) and not mmwhs.is_mmwhs_layout(missing)
  (tmp_path / 'nojson' / 'imagesTr').mkdir(parents=True)
  assert not msd.is_msd_layout(tmp_path / 'nojson')


def test_paper_split_proportions_and_labeled_fractions():
  hippo = msd.split_cases([f'hippocampus_{i:03d}' for i in range(260)])
  assert {k: len(v) for k, v in hippo.items()} == {'train': 156, 'val': 52, 'test': 52}
  assert [len(splits.labeled_subset(hippo['train'], f)) for f in (0.05, 0.1, 0.2)] == [8, 16, 31]
  ct = mmwhs.split_cases([f'ct_train_{1001 + i}' for i in range(20)])
  assert {k: len(v) for k, v in ct.items()} == {'train': 10, 'val': 5, 'test': 5}
  assert [len(splits.labeled_subset(ct['train'], f)) for f in (0.1, 0.2, 0.4)] == [1, 2, 4]
  for split in (hippo, ct):
    names = split['train'] + split['val'] + split['test']
    assert len(set(names)) == len(names)  # disjoint


def test_split_is_seeded_and_deterministic(hippo_root, ct_root):
  def names(data):
    return ([v.name for v in data.labeled.volumes], [v.name for v in data.unlabeled.volumes],
            data.splits['val'].names, data.splits['test'].names)
  a = names(msd.load(_config(hippo_root, 3, labeled_fraction=0.5)))
  assert a == names(msd.load(_config(hippo_root, 3, labeled_fraction=0.5)))
  b = names(msd.load(_config(hippo_root, 3, labeled_fraction=0.5, split_seed=1)))
  assert a != b and sorted(sum(a, [])) == sorted(sum(b, []))
  cases = list(mmwhs.find_cases(ct_root))
  assert mmwhs.split_cases(cases, seed=3) == mmwhs.split_cases(cases[::-1], seed=3)
  assert mmwhs.split_cases(cases, seed=3) != mmwhs.split_cases(cases, seed=4)


# ---------------------------------------------------------------------------------------------
# MSD (Hippocampus).


def test_msd_dataset_json(hippo_root):
  class_names, cases = msd.read_dataset_json(hippo_root)
  assert class_names == ('background', 'Anterior', 'Posterior')
  assert list(cases) == [f'hippocampus_{i + 1:03d}' for i in range(NUM_HIPPO)]
  image, label = cases['hippocampus_003']
  assert image == str(hippo_root / 'imagesTr' / 'hippocampus_003.nii.gz')
  assert label == str(hippo_root / 'labelsTr' / 'hippocampus_003.nii.gz')


def test_msd_load_case_slices_last_axis_and_normalizes(hippo_root):
  _, cases = msd.read_dataset_json(hippo_root)
  volume = msd.load_case(*cases['hippocampus_002'], num_classes=3)
  image, label = _hippo_arrays(1)
  assert volume.name == 'hippocampus_002'
  # Slices along the last NIfTI axis: (X, Y, Z) -> (Z, Y, X).
  assert volume.image.shape == HIPPO_SHAPE[::-1] and volume.image.dtype == np.float32
  assert volume.image.flags.c_contiguous and volume.label.flags.c_contiguous
  np.testing.assert_allclose(volume.image, _minmax(image).transpose(2, 1, 0), atol=1e-6)
  assert volume.image.min() == 0.0 and volume.image.max() == 1.0
  np.testing.assert_array_equal(volume.label, label.transpose(2, 1, 0))
  assert volume.label.dtype == np.uint8
  assert volume.spacing == HIPPO_ZOOMS[::-1]


def test_load_msd(hippo_root):
  data = msd.load(_config(hippo_root, 3, labeled_fraction=0.5))
  assert isinstance(data, SegmentationData) and data.layout == 'msd'
  depth = HIPPO_SHAPE[2]
  # 6 training volumes, half labeled; 5 slices each (the last NIfTI axis).
  assert len(data.labeled.volumes) == 3 and len(data.unlabeled.volumes) == 3
  assert len(data.labeled) == 3 * depth and len(data.unlabeled) == 3 * depth
  element = data.labeled[0]
  assert element['image'].shape == (64, 64) and element['image'].dtype == np.float32
  assert element['label'].shape == (64, 64) and element['label'].dtype == np.uint8
  assert set(data.unlabeled[0]) == {'image'}
  for volume in data.labeled.volumes + data.unlabeled.volumes:
    assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    assert volume.image.max() > 0.9  # normalized, not merely clipped
    assert set(np.unique(volume.label)) == {0, 1, 2}  # nearest-neighbour: no new values
  for name in ('val', 'test'):
    volumes = data.splits[name]
    assert isinstance(volumes, LazyVolumes) and len(volumes) == 2
    assert volumes[0].image.shape == HIPPO_SHAPE[::-1]  # evaluation stays native
  names = [v.name for v in data.labeled.volumes + data.unlabeled.volumes]
  names += data.splits['val'].names + data.splits['test'].names
  # Every listed case once; imagesTs and the ._ companions are never read.
  assert sorted(names) == [f'hippocampus_{i + 1:03d}' for i in range(NUM_HIPPO)]
  data.check(progress=False)
  # labeled_num when no fraction; native size on request.
  data = msd.load(_config(hippo_root, 3, labeled_num=2, msd=dict(train_size=0)))
  assert len(data.labeled) == 2 * depth and data.labeled[0]['image'].shape == (12, 9)
  with pytest.raises(ConfigError, match='num_classes'):
    msd.load(_config(hippo_root, 4))


def test_msd_bad_label_value_names_file(hippo_root):
  image, label = _hippo_arrays(0)
  label[0, 0, 0] = 3
  path = hippo_root / 'labelsTr' / 'hippocampus_001.nii.gz'
  _save_nifti(label, path, HIPPO_ZOOMS)
  _, cases = msd.read_dataset_json(hippo_root)
  with pytest.raises(DataError, match=r'label values \[3\] outside 0\.\.2') as e:
    msd.load_case(*cases['hippocampus_001'], num_classes=3)
  assert str(e.value).startswith(str(path))


def test_msd_corrupt_gz_names_file(hippo_root):
  path = hippo_root / 'imagesTr' / 'hippocampus_005.nii.gz'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])  # truncated download
  _, cases = msd.read_dataset_json(hippo_root)
  with pytest.raises(DataError, match='not a readable NIfTI') as e:
    msd.load_case(*cases['hippocampus_005'], num_classes=3)
  assert str(e.value).startswith(str(path)) and '\n' not in str(e.value)
  path.write_bytes(gzip.compress(b'not a nifti header'))
  with pytest.raises(DataError, match='not a readable NIfTI'):
    msd.load_case(*cases['hippocampus_005'], num_classes=3)


def test_msd_bad_dataset_json_names_file(hippo_root):
  path = hippo_root / 'dataset.json'
  meta = json.loads(path.read_text())
  path.write_text('{"labels": ')
  with pytest.raises(DataError, match='not a readable JSON') as e:
    msd.read_dataset_json(hippo_root)
  assert str(e.value).startswith(str(path))
  path.write_text(json.dumps(dict(meta, labels={'0': 'background', '2': 'Posterior'})))
  with pytest.raises(DataError, match=r'"labels" keys must be 0\.\.1'):
    msd.read_dataset_json(hippo_root)
  path.write_text(json.dumps(dict(meta, training=[{'image': './imagesTr/x.nii.gz'}])))
  with pytest.raises(DataError, match='"training" entry 0'):
    msd.read_dataset_json(hippo_root)


def test_minmax_normalize_constant_image_is_an_error():
  np.testing.assert_allclose(readers.minmax_normalize(np.array([2.0, 4.0, 6.0]), 'x'), [0, 0.5, 1])
  with pytest.raises(DataError, match='x: image is constant'):
    readers.minmax_normalize(np.full((2, 2), 7.0), 'x')


# ---------------------------------------------------------------------------------------------
# MM-WHS.


def test_mmwhs_map_labels():
  values = np.array([[0, 205, 420, 500], [550, 600, 820, 850]], np.float32)
  np.testing.assert_array_equal(mmwhs.map_labels('f', values), [[0, 1, 2, 3], [4, 5, 6, 7]])
  assert mmwhs.map_labels('f', values).dtype == np.uint8
  assert dict(zip(mmwhs.LABEL_VALUES, mmwhs.CLASS_NAMES)) == {
    205: 'MYO', 420: 'LA', 500: 'LV', 550: 'RA', 600: 'RV', 820: 'AA', 850: 'PA'}
  bad = values.copy()
  bad[0, 0], bad[1, 1] = 421, 1000
  with pytest.raises(DataError, match=r'^f: unknown MM-WHS label values \[421, 1000\]'):
    mmwhs.map_labels('f', bad)


def test_mmwhs_load_case(ct_root):
  image_path, label_path = mmwhs.find_cases(ct_root)['ct_train_1003']
  volume = mmwhs.load_case(image_path, label_path)
  image, label = _ct_arrays(2)
  assert volume.name == 'ct_train_1003' and volume.path == image_path
  assert volume.image.shape == CT_SHAPE[::-1] and volume.image.dtype == np.float32
  np.testing.assert_allclose(volume.image, _minmax(image).transpose(2, 1, 0), atol=1e-6)
  expected = np.searchsorted((0,) + mmwhs.LABEL_VALUES, label).transpose(2, 1, 0)
  np.testing.assert_array_equal(volume.label, expected)
  assert set(np.unique(volume.label)) == set(range(8))
  assert volume.spacing == pytest.approx(CT_ZOOMS[::-1])


def test_load_mmwhs(ct_root):
  data = mmwhs.load(_config(ct_root, 8, labeled_fraction=0.5))
  assert isinstance(data, SegmentationData) and data.layout == 'mmwhs'
  depth = CT_SHAPE[2]
  # 8 cases 2:1:1 -> 4 training (half labeled), 2 validation, 2 test.
  assert len(data.labeled.volumes) == 2 and len(data.unlabeled.volumes) == 2
  assert len(data.labeled) == 2 * depth and len(data.unlabeled) == 2 * depth
  element = data.labeled[depth - 1]
  assert element['image'].shape == (160, 160) and element['label'].shape == (160, 160)
  for volume in data.labeled.volumes:
    assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    assert set(np.unique(volume.label)) == set(range(8))
  for name in ('val', 'test'):
    volumes = data.splits[name]
    assert isinstance(volumes, LazyVolumes) and len(volumes) == 2
    assert volumes[1].image.shape == CT_SHAPE[::-1] and volumes[1].label.max() == 7
  assert 'ct_test_2001' not in sum((list(v.names) for v in data.splits.values()), [])
  data.check(progress=False)
  with pytest.raises(ConfigError, match='num_classes'):
    mmwhs.load(_config(ct_root, 3))


def test_mmwhs_unknown_label_value_names_file(ct_root):
  image, label = _ct_arrays(0)
  label[0, 0, 0] = 421
  path = ct_root / 'ct_train' / 'ct_train_1001_label.nii.gz'
  _save_nifti(label, path, CT_ZOOMS)
  with pytest.raises(DataError, match=r'unknown MM-WHS label values \[421\]') as e:
    mmwhs.load_case(*mmwhs.find_cases(ct_root)['ct_train_1001'])
  assert str(e.value).startswith(str(path)) and '\n' not in str(e.value)


def test_mmwhs_corrupt_gz_names_file(ct_root):
  path = ct_root / 'ct_train' / 'ct_train_1004_label.nii.gz'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match='not a readable NIfTI') as e:
    mmwhs.load_case(*mmwhs.find_cases(ct_root)['ct_train_1004'])
  assert str(e.value).startswith(str(path)) and '\n' not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Errors both layouts name the same way.


def _load_one(module, root, name):
  if module is msd:
    return msd.load_case(*msd.read_dataset_json(root)[1][name], num_classes=3)
  return mmwhs.load_case(*mmwhs.find_cases(root)[name])


@pytest.mark.parametrize('module, root_fixture, label, num_classes', [
    (msd, 'hippo_root', 'labelsTr/hippocampus_007.nii.gz', 3),
    (mmwhs, 'ct_root', 'ct_train/ct_train_1006_label.nii.gz', 8)])
def test_missing_label_names_file(module, root_fixture, label, num_classes, request):
  root = request.getfixturevalue(root_fixture)
  (root / label).unlink()
  with pytest.raises(DataError, match='file not found') as e:
    module.load(_config(root, num_classes, labeled_fraction=0.5))
  assert str(e.value).startswith(str(root / label)) and '\n' not in str(e.value)


@pytest.mark.parametrize('module, root_fixture, case, label, shape, zooms', [
    (msd, 'hippo_root', 'hippocampus_004', 'labelsTr/hippocampus_004.nii.gz', (9, 12, 4),
     HIPPO_ZOOMS),
    (mmwhs, 'ct_root', 'ct_train_1002', 'ct_train/ct_train_1002_label.nii.gz', (16, 14, 5),
     CT_ZOOMS)])
def test_label_shape_mismatch_names_file(module, root_fixture, case, label, shape, zooms, request):
  root = request.getfixturevalue(root_fixture)
  _save_nifti(np.zeros(shape, np.int16), root / label, zooms)
  with pytest.raises(DataError, match='differs from image shape') as e:
    _load_one(module, root, case)
  assert str(e.value).startswith(str(root / label))


# ---------------------------------------------------------------------------------------------
# Through load_data, with the experiments' paper settings.


@pytest.mark.parametrize('experiment, root_fixture, size', [
  ('hippocampus_supervised', 'hippo_root', 64), ('mmwhs_supervised', 'ct_root', 160)])
def test_paper_experiment_loads_its_dataset(experiment, root_fixture, size, request):
  config = config_lib.load_experiment(experiment, 'paper')
  assert config.num_classes == len(config.class_names) + 1
  assert config.data.image_size == size and config.eval.patch_size == size
  assert config.optimizer.name == 'adam' and config.optimizer.schedule == 'constant'
  config.data.dir = str(request.getfixturevalue(root_fixture))
  config.data.labeled_fraction = 0.5  # of the fixture's few training volumes
  data = datasets.load_data(config)
  assert data.labeled[0]['image'].shape == (size, size)
  assert int(max(v.label.max() for v in data.labeled.volumes)) == config.num_classes - 1
