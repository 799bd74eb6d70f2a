"""`datasets.load_data` (layouts, SSL4MIS labeled split) and `pipeline.make_train_iterator`
(batches, determinism, checkpointable position)."""

from __future__ import annotations

import json
import os
import pathlib

import h5py
import nibabel as nib
import numpy as np
import pytest

from conftest import config_3d, tiny_config
from jaxseg import config as config_lib
from jaxseg.data import acdc, datasets, pipeline

XYZ = (12, 16, 5)  # nibabel (X, Y, Z) of the NIfTI fixtures; (D, H, W) = (5, 16, 12)


def _config(data_dir, labeled_num: int):
  config = config_lib.base_config()
  config.data.dir = str(data_dir)
  config.data.labeled_num = labeled_num
  return config


def _source_items(source) -> list[dict[str, np.ndarray]]:
  return [source[i] for i in range(len(source))]


def _assert_slices_equal(items, expected) -> None:
  """items: source elements; expected: (image, label or None) pairs, in order."""
  assert len(items) == len(expected)
  for item, (image, label) in zip(items, expected):
    assert item['image'].dtype == np.float32
    np.testing.assert_array_equal(item['image'], image)
    if label is None:
      assert 'label' not in item
    else:
      assert item['label'].dtype == np.uint8
      np.testing.assert_array_equal(item['label'], label)


# --- real ACDC (SSL4MIS h5) -----------------------------------------------------------------


@pytest.mark.parametrize('labeled_num, num_slices', [(3, 68), (7, 136), (14, 256)])
def test_real_acdc_labeled_split(acdc_dir, labeled_num, num_slices):
  data = datasets.load_data(_config(acdc_dir, labeled_num))
  assert data.layout == 'ssl4mis_h5'
  with open(os.path.join(acdc_dir, 'train_slices.list')) as f:
    names = [line.strip() for line in f if line.strip()]
  paths = [os.path.join(acdc_dir, 'data', 'slices', f'{name}.h5') for name in names]
  assert len(data.labeled) == num_slices
  assert data.labeled.paths == paths[:num_slices]
  assert data.unlabeled.paths == paths[num_slices:]
  assert data.labeled.with_label and not data.unlabeled.with_label
  patients = {os.path.basename(p).split('_')[0] for p in data.labeled.paths}
  assert patients == set(acdc.TRAIN_PATIENTS[:labeled_num])
  with open(os.path.join(acdc_dir, 'val.list')) as f:
    val_names = [line.strip() for line in f if line.strip()]
  assert len(data.splits['val']) == 20
  assert data.splits['val'].names == val_names


# --- ACDC NIfTI layout --------------------------------------------------------------------


def _nifti_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(image int16, label uint8) in (X, Y, Z); random so every patient and frame differs."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 1000, XYZ).astype(np.int16),
          rng.integers(0, 4, XYZ).astype(np.uint8))


def _expected_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """What SSL4MIS makes of a frame: (D, H, W) = (Z, Y, X), min-max normalized image."""
  image, label = _nifti_frame(seed)
  x = image.astype(np.float64)
  image = ((x - x.min()) / (x.max() - x.min())).astype(np.float32)
  return image.transpose(2, 1, 0), label.transpose(2, 1, 0)


def _write_nifti_patient(root: pathlib.Path, pid: str, seeds: tuple[int, int]) -> None:
  folder = root / 'training' / pid
  folder.mkdir(parents=True)
  frames = (1, 11)
  for frame, seed in zip(frames, seeds):
    image, label = _nifti_frame(seed)
    affine = np.diag([1.5, 1.25, 10.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(folder / f'{pid}_frame{frame:02d}.nii.gz'))
    nib.save(nib.Nifti1Image(label, affine), str(folder / f'{pid}_frame{frame:02d}_gt.nii.gz'))
  (folder / 'Info.cfg').write_text(f'ED: {frames[0]}\nES: {frames[1]}\nGroup: NOR\n')


def test_acdc_nifti_layout(tmp_path):
  root = tmp_path / 'ACDC'
  # Written in sorted order (patient038, patient050, patient099): the split must follow
  # TRAIN_PATIENTS (patient099 first), not the folder order.
  patients = list(acdc.TRAIN_PATIENTS[:3]) + [acdc.VAL_PATIENTS[0]]
  seeds = {pid: (10 * i, 10 * i + 1) for i, pid in enumerate(patients)}
  for pid in sorted(patients):
    _write_nifti_patient(root, pid, seeds[pid])
  assert datasets.detect_layout(str(root)) == 'acdc_nifti'
  data = datasets.load_data(_config(root, 1))
  assert data.layout == 'acdc_nifti'

  def slices(pids, with_label):
    out = []
    for pid in pids:
      for seed in seeds[pid]:
        image, label = _expected_volume(seed)
        out += [(image[z], label[z] if with_label else None) for z in range(XYZ[2])]
    return out

  first = acdc.TRAIN_PATIENTS[0]
  assert len(data.labeled) == 2 * XYZ[2]
  _assert_slices_equal(_source_items(data.labeled), slices([first], True))
  _assert_slices_equal(_source_items(data.unlabeled), slices(acdc.TRAIN_PATIENTS[1:3], False))
  val = data.splits['val']
  assert [v.name for v in val] == [f'{acdc.VAL_PATIENTS[0]}_frame0{i}' for i in (1, 2)]
  for volume, seed in zip(val, seeds[acdc.VAL_PATIENTS[0]]):
    image, label = _expected_volume(seed)
    np.testing.assert_array_equal(volume.image, image)
    np.testing.assert_array_equal(volume.label, label)
  assert 'test' not in data.splits


# --- SSL4MIS h5 layout --------------------------------------------------------------------


def _h5_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (rng.random((3, 24, 20)).astype(np.float32),
          rng.integers(0, 4, (3, 24, 20)).astype(np.uint8))


def _write_h5(path: pathlib.Path, image: np.ndarray, label: np.ndarray) -> None:
  with h5py.File(path, 'w') as f:
    f.create_dataset('image', data=image)
    f.create_dataset('label', data=label)


def test_ssl4mis_h5_layout(tmp_path):
  root = tmp_path / 'ACDC'
  (root / 'data' / 'slices').mkdir(parents=True)
  train = acdc.TRAIN_PATIENTS[:3]
  val = acdc.VAL_PATIENTS[0]
  volumes, names = {}, []
  for i, pid in enumerate(train + (val,)):
    for frame in (1, 2):
      name = f'{pid}_frame{frame:02d}'
      volumes[name] = _h5_volume(10 * i + frame)
      _write_h5(root / 'data' / f'{name}.h5', *volumes[name])
      if pid != val:
        for z in (2, 0, 1):  # SSL4MIS lists slices out of order
          _write_h5(root / 'data' / 'slices' / f'{name}_slice_{z}.h5',
                    volumes[name][0][z], volumes[name][1][z])
          names.append(f'{name}_slice_{z}')
  (root / 'train_slices.list').write_text('\n'.join(names) + '\n')
  (root / 'val.list').write_text(f'{val}_frame01\n{val}_frame02.h5\n')  # '.h5' is optional
  assert datasets.detect_layout(str(root)) == 'ssl4mis_h5'
  data = datasets.load_data(_config(root, 1))
  assert data.layout == 'ssl4mis_h5'

  def expected(listed, with_label):
    out = []
    for entry in listed:
      name, z = entry.rsplit('_slice_', 1)
      image, label = volumes[name]
      out.append((image[int(z)], label[int(z)] if with_label else None))
    return out

  assert len(data.labeled) == 6  # both frames of TRAIN_PATIENTS[0], 3 slices each
  assert [os.path.basename(p) for p in data.labeled.paths] == [f'{n}.h5' for n in names[:6]]
  _assert_slices_equal(_source_items(data.labeled), expected(names[:6], True))
  _assert_slices_equal(_source_items(data.unlabeled), expected(names[6:], False))
  assert len(data.splits['val']) == 2
  for i, volume in enumerate(data.splits['val']):
    name = f'{val}_frame0{i + 1}'
    assert volume.name == name
    np.testing.assert_array_equal(volume.image, volumes[name][0])
    np.testing.assert_array_equal(volume.label, volumes[name][1])


# --- Grain training iterator --------------------------------------------------------------


@pytest.fixture(scope='module')
def smoke():
  """(config, data) of the smoke experiment on the synthetic phantom."""
  config = tiny_config('smoke')
  return config, datasets.load_data(config)


def _take(iterator, n: int):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b) -> None:
  assert len(batches_a) == len(batches_b)
  for (la, ua), (lb, ub) in zip(batches_a, batches_b):
    for a, b in ((la, lb), (ua, ub)):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _differ(batches_a, batches_b, stream: int, key: str) -> bool:
  return any(not np.array_equal(a[stream][key], b[stream][key])
             for a, b in zip(batches_a, batches_b))


def test_iterator_is_deterministic(smoke):
  config, data = smoke
  first = _take(pipeline.make_train_iterator(data, config, with_unlabeled=True), 5)
  again = _take(pipeline.make_train_iterator(data, config, with_unlabeled=True), 5)
  _assert_same(first, again)
  other = config.copy_and_resolve_references()
  other.seed = config.seed + 1
  reseeded = _take(pipeline.make_train_iterator(data, other, with_unlabeled=True), 5)
  assert _differ(first, reseeded, 0, 'image')
  assert _differ(first, reseeded, 0, 'label')
  assert _differ(first, reseeded, 1, 'image_weak')


def test_iterator_state_restores_the_stream(smoke):
  config, data = smoke
  iterator = pipeline.make_train_iterator(data, config, with_unlabeled=True)
  _take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # as checkpoints store it
  continued = _take(iterator, 4)
  fresh = pipeline.make_train_iterator(data, config, with_unlabeled=True)
  fresh.set_state(state)
  _assert_same(continued, _take(fresh, 4))
  # And the restored position is not simply the start of the stream.
  start = _take(pipeline.make_train_iterator(data, config, with_unlabeled=True), 4)
  assert _differ(continued, start, 0, 'image')


def test_batch_shapes_and_dtypes(smoke):
  config, data = smoke
  s, k = config.data.image_size, config.num_classes
  bl, bu = config.data.labeled_batch, config.data.unlabeled_batch
  for labeled, unlabeled in _take(pipeline.make_train_iterator(data, config, True), 3):
    assert set(labeled) == {'image', 'label'}
    assert labeled['image'].dtype == np.float32 and labeled['image'].shape == (bl, s, s)
    assert labeled['label'].dtype == np.int32 and labeled['label'].shape == (bl, s, s)
    assert labeled['label'].min() >= 0 and labeled['label'].max() < k
    assert set(unlabeled) == {'image_weak', 'image_strong'}
    for key in unlabeled:
      assert unlabeled[key].dtype == np.float32 and unlabeled[key].shape == (bu, s, s), key
  labeled, unlabeled = next(pipeline.make_train_iterator(data, config, with_unlabeled=False))
  assert unlabeled is None and labeled['image'].shape == (bl, s, s)


def test_h5_slices_are_resized_in_batches(tmp_path, smoke):
  """Non-square 24x20 h5 slices come out as (B, S, S) batches with valid labels."""
  config, _ = smoke
  root = tmp_path / 'ACDC'
  (root / 'data' / 'slices').mkdir(parents=True)
  names = []
  for i, pid in enumerate(('patient001', 'patient002')):
    image, label = _h5_volume(i)
    _write_h5(root / 'data' / f'{pid}_frame01.h5', image, label)
    for z in range(3):
      _write_h5(root / 'data' / 'slices' / f'{pid}_frame01_slice_{z}.h5', image[z], label[z])
      names.append(f'{pid}_frame01_slice_{z}')
  (root / 'train_slices.list').write_text('\n'.join(names) + '\n')
  (root / 'val.list').write_text('patient002_frame01\n')
  h5_config = config.copy_and_resolve_references()
  h5_config.data.dir = str(root)
  h5_config.data.labeled_num = 1
  data = datasets.load_data(h5_config)
  s = h5_config.data.image_size
  for labeled, unlabeled in _take(pipeline.make_train_iterator(data, h5_config, True), 2):
    assert labeled['image'].shape == labeled['label'].shape == (2, s, s)
    assert labeled['label'].dtype == np.int32 and set(np.unique(labeled['label'])) <= {0, 1, 2, 3}
    assert unlabeled['image_weak'].shape == (2, s, s)


# --- 3D streams ----------------------------------------------------------------------------


def test_3d_stream_is_deterministic_and_restorable():
  c = config_3d(strong_noise=0.05)
  data = datasets.load_data(c)
  assert data.layout == 'synthetic3d' and len(data.labeled) == 2 and len(data.unlabeled) == 4
  first = _take(pipeline.make_train_iterator(data, c, with_unlabeled=True), 5)
  again = pipeline.make_train_iterator(data, c, with_unlabeled=True)
  _assert_same(first, _take(again, 5))
  labeled, unlabeled = first[0]
  assert labeled['image'].shape == labeled['label'].shape == (2, 16, 16, 8)
  assert set(unlabeled) == {'image_weak', 'image_strong'}
  assert unlabeled['image_weak'].shape == (2, 16, 16, 8)
  # Restored after 2 batches, a fresh iterator yields the same remaining 3.
  it = pipeline.make_train_iterator(data, c, with_unlabeled=True)
  _take(it, 2)
  state = it.get_state()
  restored = pipeline.make_train_iterator(data, c, with_unlabeled=True)
  restored.set_state(state)
  _assert_same(first[2:], _take(restored, 3))
  # A different seed gives different crops.
  c.seed = 1
  other = _take(pipeline.make_train_iterator(data, c, with_unlabeled=True), 1)
  assert not np.array_equal(other[0][0]['image'], labeled['image'])
