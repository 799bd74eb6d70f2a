"""Tests for jaxseg.data.readers: h5/NIfTI readers, the ACDC NIfTI layout and the split."""

from __future__ import annotations

import gzip
import os
import pathlib

import h5py
import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import acdc, readers
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError

ACDC_ROOT = pathlib.Path('/work/shared/data/ACDC')
needs_acdc = pytest.mark.skipif(
  not (ACDC_ROOT / 'train.list').exists(),
  reason=f'real ACDC data (SSL4MIS h5 layout) not present at {ACDC_ROOT}')

# nibabel (X, Y, Z) shape of the fixture volumes; (D, H, W) is the reverse.
XYZ = (12, 16, 5)
ZOOMS = (1.5, 1.25, 10.0)


def _affine() -> np.ndarray:
  """Non-trivial affine: x and y swapped with a flip, anisotropic voxels, an offset."""
  return np.array([
    [0.0, -ZOOMS[1], 0.0, 100.0],
    [ZOOMS[0], 0.0, 0.0, -50.0],
    [0.0, 0.0, ZOOMS[2], 7.5],
    [0.0, 0.0, 0.0, 1.0],
  ])


def _image_xyz(offset: int) -> np.ndarray:
  # Distinct integer values so any axis mix-up changes the result; int16 like ACDC.
  return (np.arange(np.prod(XYZ)).reshape(XYZ) + offset).astype(np.int16)


def _label_xyz(offset: int) -> np.ndarray:
  return ((np.arange(np.prod(XYZ)).reshape(XYZ) + offset) % 4).astype(np.uint8)


def _save(array: np.ndarray, path: pathlib.Path) -> None:
  nib.save(nib.Nifti1Image(array, _affine()), str(path))


def _write_patient(folder: pathlib.Path, pid: str, frames: tuple[int, int],
                   info: bool) -> None:
  folder.mkdir(parents=True)
  for k, frame in enumerate(frames):
    _save(_image_xyz(100 * k + 10), folder / f'{pid}_frame{frame:02d}.nii.gz')
    _save(_label_xyz(k), folder / f'{pid}_frame{frame:02d}_gt.nii.gz')
  if info:
    (folder / 'Info.cfg').write_text(
      f'ED: {frames[0]}\nES: {frames[1]}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\n'
      'Weight: 95.0\n')


@pytest.fixture
def acdc_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """Official-release-like tree: patient001 (with Info.cfg), patient101 (without)."""
  root = tmp_path / 'ACDC'
  _write_patient(root / 'training' / 'patient001', 'patient001', (1, 12), info=True)
  _write_patient(root / 'testing' / 'patient101', 'patient101', (1, 9), info=False)
  return root


def _write_h5(path: pathlib.Path, **datasets: np.ndarray) -> pathlib.Path:
  with h5py.File(path, 'w') as f:
    for key, value in datasets.items():
      f.create_dataset(key, data=value)
  return path


def _good_h5(path: pathlib.Path, shape: tuple[int, ...] = (3, 8, 6)) -> pathlib.Path:
  image = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
  label = (np.arange(int(np.prod(shape))) % 4).astype(np.uint8).reshape(shape)
  return _write_h5(path, image=image, label=label)


def _raises(path: os.PathLike | str, *words: str, fn=None, **kwargs) -> str:
  """Calls fn (default read_h5) and checks a one-line DataError naming the file and words."""
  fn = fn or (lambda p: readers.read_h5(p, num_classes=4, **kwargs))
  with pytest.raises(DataError) as info:
    fn(path)
  message = str(info.value)
  assert '\n' not in message
  assert os.path.basename(str(path)) in message
  for word in words:
    assert word in message, message
  return message


# --- read_h5 -----------------------------------------------------------------------------


def test_read_h5_good_2d_and_3d(tmp_path):
  for shape in [(8, 6), (3, 8, 6)]:
    image, label = readers.read_h5(_good_h5(tmp_path / f'{len(shape)}.h5', shape),
                                   num_classes=4)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == shape
    assert set(np.unique(label)) == {0, 1, 2, 3}


def test_read_h5_float_integral_label_is_accepted(tmp_path):
  path = _write_h5(tmp_path / 'f.h5', image=np.zeros((4, 4)), label=np.full((4, 4), 2.0))
  image, label = readers.read_h5(path, num_classes=4)
  assert image.dtype == np.float32 and label.dtype == np.uint8 and (label == 2).all()


def test_read_h5_label_optional(tmp_path):
  path = _write_h5(tmp_path / 'u.h5', image=np.zeros((4, 4), np.float32))
  image, label = readers.read_h5(path, num_classes=4, require_label=False)
  assert label is None and image.shape == (4, 4)
  message = _raises(path, 'missing', "'label'")
  assert message.startswith(str(path))
  assert "['image']" in message  # The keys present are listed.


def test_read_h5_missing_file(tmp_path):
  message = _raises(tmp_path / 'nope.h5', 'not found')
  assert message.startswith(str(tmp_path / 'nope.h5'))


def test_read_h5_truncated(tmp_path):
  path = _good_h5(tmp_path / 'trunc.h5', (4, 64, 64))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  _raises(path, 'HDF5', 'corrupt')


def test_read_h5_garbage(tmp_path):
  path = tmp_path / 'garbage.h5'
  path.write_bytes(b'this is not hdf5 at all' * 10)
  _raises(path, 'not a readable HDF5')


def test_read_h5_missing_image_key(tmp_path):
  path = _write_h5(tmp_path / 'k.h5', img=np.zeros((4, 4)), label=np.zeros((4, 4)))
  message = _raises(path, "'image'", 'missing')
  assert "'img'" in message and "'label'" in message


def test_read_h5_bad_ndim(tmp_path):
  path = _write_h5(tmp_path / 'nd.h5', image=np.zeros((2, 2, 2, 2)), label=np.zeros((2, 2, 2, 2)))
  _raises(path, '2D or 3D', '(2, 2, 2, 2)')


def test_read_h5_shape_mismatch(tmp_path):
  path = _write_h5(tmp_path / 's.h5', image=np.zeros((3, 8, 6)), label=np.zeros((3, 8, 5)))
  _raises(path, 'shape', '(3, 8, 5)', '(3, 8, 6)')


def test_read_h5_nan_and_inf(tmp_path):
  image = np.zeros((4, 4), np.float32)
  image[0, :3] = np.nan
  image[1, 0] = np.inf
  path = _write_h5(tmp_path / 'nan.h5', image=image, label=np.zeros((4, 4), np.uint8))
  _raises(path, '3 NaN', '1 Inf')


def test_read_h5_label_out_of_range(tmp_path):
  label = np.zeros((4, 4), np.uint8)
  label[0, 0], label[1, 1], label[2, 2] = 4, 7, 7
  path = _write_h5(tmp_path / 'range.h5', image=np.zeros((4, 4)), label=label)
  _raises(path, 'label values [4, 7] outside 0..3')


def test_read_h5_negative_label(tmp_path):
  label = np.zeros((4, 4), np.int16)
  label[0, 0] = -1
  path = _write_h5(tmp_path / 'neg.h5', image=np.zeros((4, 4)), label=label)
  _raises(path, 'label values [-1] outside 0..3')


def test_read_h5_non_integer_label(tmp_path):
  label = np.zeros((4, 4), np.float32)
  label[0, 0] = 0.5
  path = _write_h5(tmp_path / 'frac.h5', image=np.zeros((4, 4)), label=label)
  _raises(path, 'non-integer label', '0.5')


# --- read_nifti --------------------------------------------------------------------------


def test_read_nifti_order_affine_zooms(tmp_path):
  path = tmp_path / 'v.nii.gz'
  _save(_image_xyz(0), path)
  data, affine, zooms = readers.read_nifti(path)
  assert data.dtype == np.float32 and data.shape == XYZ
  np.testing.assert_array_equal(data, _image_xyz(0))
  np.testing.assert_allclose(affine, _affine(), atol=1e-5)
  np.testing.assert_allclose(zooms, ZOOMS)


def test_read_nifti_missing(tmp_path):
  _raises(tmp_path / 'nope.nii.gz', 'not found', fn=readers.read_nifti)


def test_read_nifti_garbage(tmp_path):
  path = tmp_path / 'garbage.nii.gz'
  path.write_bytes(os.urandom(64) + b'garbage' * 50)
  _raises(path, 'not a readable NIfTI', fn=readers.read_nifti)


def test_read_nifti_gzip_of_garbage(tmp_path):
  path = tmp_path / 'gzgarbage.nii.gz'
  path.write_bytes(gzip.compress(b'not a nifti header' * 40))
  _raises(path, 'not a readable NIfTI', fn=readers.read_nifti)


def test_read_nifti_truncated(tmp_path):
  path = tmp_path / 'trunc.nii.gz'
  _save(np.random.default_rng(0).normal(size=(32, 32, 8)).astype(np.float32), path)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  _raises(path, 'corrupt or truncated', fn=readers.read_nifti)


def test_read_nifti_nan(tmp_path):
  data = np.zeros(XYZ, np.float32)
  data[0, 0, 0] = np.nan
  path = tmp_path / 'nan.nii.gz'
  _save(data, path)
  _raises(path, '1 NaN', fn=readers.read_nifti)


# --- ACDC NIfTI layout -------------------------------------------------------------------


def test_find_acdc_patient_dirs(acdc_root, tmp_path):
  dirs = acdc.find_patient_dirs(acdc_root)
  assert dirs == {'patient001': str(acdc_root / 'training' / 'patient001'),
                  'patient101': str(acdc_root / 'testing' / 'patient101')}
  assert acdc.is_acdc_layout(acdc_root)
  assert not acdc.is_acdc_layout(tmp_path / 'nope')
  assert not acdc.is_acdc_layout(acdc_root / 'training' / 'patient001')
  # Patient folders directly under root count too.
  flat = tmp_path / 'flat'
  _write_patient(flat / 'patient005', 'patient005', (1, 8), info=True)
  assert acdc.find_patient_dirs(flat) == {'patient005': str(flat / 'patient005')}
  assert acdc.is_acdc_layout(flat)
  # The SSL4MIS h5 layout is not this one.
  h5_root = tmp_path / 'h5'
  (h5_root / 'data').mkdir(parents=True)
  _good_h5(h5_root / 'data' / 'patient001_frame01.h5')
  assert not acdc.is_acdc_layout(h5_root)


def test_find_acdc_patient_dirs_errors(acdc_root, tmp_path):
  _raises(tmp_path / 'nope', 'not found', fn=acdc.find_patient_dirs)
  (acdc_root / 'testing' / 'patient001').mkdir()
  _raises(acdc_root, 'patient001', 'twice', fn=acdc.find_patient_dirs)
  assert acdc.is_acdc_layout(acdc_root)


def test_load_acdc_volume(acdc_root):
  folder = acdc_root / 'training' / 'patient001'
  for frame_index, frame, k in [(1, 1, 0), (2, 12, 1)]:
    vol = acdc.load_volume(str(folder), frame_index)
    assert isinstance(vol, Volume)
    assert vol.name == f'patient001_frame{frame_index:02d}'
    assert vol.path.endswith(f'patient001_frame{frame:02d}.nii.gz')
    d, h, w = XYZ[::-1]
    assert vol.image.shape == vol.label.shape == (d, h, w)
    assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
    x = _image_xyz(100 * k + 10).astype(np.float64)
    expected = ((x - x.min()) / (x.max() - x.min())).astype(np.float32).transpose(2, 1, 0)
    np.testing.assert_array_equal(vol.image, expected)
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0
    np.testing.assert_array_equal(vol.label, _label_xyz(k).transpose(2, 1, 0))
    # Element (z, y, x) of the volume is element (x, y, z) of the file.
    assert vol.label[4, 3, 2] == _label_xyz(k)[2, 3, 4]
    assert vol.spacing == (ZOOMS[2], ZOOMS[1], ZOOMS[0])
    np.testing.assert_allclose(vol.affine, _affine(), atol=1e-5)


def test_load_acdc_volume_without_info_cfg(acdc_root):
  folder = acdc_root / 'testing' / 'patient101'
  es = acdc.load_volume(folder, 2)
  assert es.name == 'patient101_frame02'
  assert es.path.endswith('patient101_frame09.nii.gz')
  (folder / 'patient101_frame05_gt.nii.gz').write_bytes(b'')
  _raises(folder, 'Info.cfg', 'found 3', fn=lambda p: acdc.load_volume(p, 1))


def test_prediction_round_trip(acdc_root, tmp_path):
  vol = acdc.load_volume(acdc_root / 'training' / 'patient001', 1)
  out = tmp_path / 'pred.nii.gz'
  nib.save(nib.Nifti1Image(vol.label.transpose(2, 1, 0), vol.affine), str(out))
  data, affine, _ = readers.read_nifti(out)
  np.testing.assert_array_equal(data, _label_xyz(0))
  np.testing.assert_allclose(affine, _affine(), atol=1e-5)


def test_load_acdc_volume_errors(acdc_root, tmp_path):
  folder = acdc_root / 'training' / 'patient001'
  load = lambda frame_index: (lambda p: acdc.load_volume(p, frame_index))
  with pytest.raises(ValueError):
    acdc.load_volume(folder, 3)
  _raises(tmp_path / 'patient009', 'not found', fn=load(1))
  # Bad label values in the ground truth.
  bad = _label_xyz(0)
  bad[0, 0, 0] = 5
  _save(bad, folder / 'patient001_frame01_gt.nii.gz')
  _raises(folder / 'patient001_frame01_gt.nii.gz', 'label values [5] outside 0..3',
          fn=lambda p: load(1)(folder))
  # Shape mismatch between image and ground truth.
  _save(np.zeros((12, 16, 4), np.uint8), folder / 'patient001_frame12_gt.nii.gz')
  _raises(folder / 'patient001_frame12_gt.nii.gz', 'shape', '(12, 16, 4)', '(12, 16, 5)',
          fn=lambda p: load(2)(folder))
  # Corrupt image file.
  (folder / 'patient001_frame12.nii.gz').write_bytes(b'garbage' * 20)
  _raises(folder / 'patient001_frame12.nii.gz', 'not a readable NIfTI',
          fn=lambda p: load(2)(folder))
  # Info.cfg naming a frame that is not there.
  (folder / 'Info.cfg').write_text('ED: 3\nES: 12\n')
  _raises(folder / 'patient001_frame03.nii.gz', 'not found', fn=lambda p: load(1)(folder))
  (folder / 'Info.cfg').write_text('ED: one\n')
  _raises(folder / 'Info.cfg', 'ED', fn=lambda p: load(1)(folder))
  _raises(folder / 'Info.cfg', "'ES'", 'Info.cfg', fn=lambda p: load(2)(folder))


def test_load_acdc_volume_without_label(acdc_root):
  folder = acdc_root / 'training' / 'patient001'
  (folder / 'patient001_frame01_gt.nii.gz').unlink()
  vol = acdc.load_volume(folder, 1, require_label=False)
  assert vol.label is None and vol.image.shape == XYZ[::-1]
  _raises(folder / 'patient001_frame01_gt.nii.gz', 'not found',
          fn=lambda p: acdc.load_volume(folder, 1))


def test_load_acdc_constant_image(acdc_root):
  folder = acdc_root / 'training' / 'patient001'
  _save(np.full(XYZ, 7, np.int16), folder / 'patient001_frame01.nii.gz')
  _raises(folder / 'patient001_frame01.nii.gz', 'constant',
          fn=lambda p: acdc.load_volume(folder, 1))


# --- SSL4MIS split and real data ---------------------------------------------------------


def test_split_is_a_partition_of_100_patients():
  train, val, test = acdc.TRAIN_PATIENTS, acdc.VAL_PATIENTS, acdc.TEST_PATIENTS
  assert (len(train), len(val), len(test)) == (70, 10, 20)
  everyone = set(train) | set(val) | set(test)
  assert len(everyone) == 100
  assert everyone == {f'patient{i:03d}' for i in range(1, 101)}
  assert list(test) == sorted(test)
  assert acdc.SSL4MIS_ACDC_SPLIT['train'] == train
  assert acdc.SSL4MIS_ACDC_SPLIT['val'] == val
  assert acdc.SSL4MIS_ACDC_SPLIT['test'] == test


def _patients_in_order(list_file: pathlib.Path) -> list[str]:
  out: list[str] = []
  for line in list_file.read_text().split():
    pid = line.split('_')[0]
    if pid not in out:
      out.append(pid)
  return out


@needs_acdc
def test_split_matches_ssl4mis_lists():
  assert list(acdc.TRAIN_PATIENTS) == _patients_in_order(ACDC_ROOT / 'train.list')
  assert list(acdc.VAL_PATIENTS) == _patients_in_order(ACDC_ROOT / 'val.list')
  slices = {name.split('_')[0] for name in (ACDC_ROOT / 'train_slices.list').read_text().split()}
  assert slices == set(acdc.TRAIN_PATIENTS)


@needs_acdc
def test_read_real_acdc_slice_and_volume():
  name = (ACDC_ROOT / 'train_slices.list').read_text().split()[0]
  image, label = readers.read_h5(ACDC_ROOT / 'data' / 'slices' / f'{name}.h5', num_classes=4)
  assert image.ndim == 2 and image.shape == label.shape
  assert image.dtype == np.float32 and label.dtype == np.uint8
  assert 0.0 <= image.min() and image.max() <= 1.0 and label.max() <= 3
  vol_name = (ACDC_ROOT / 'val.list').read_text().split()[0]
  image, label = readers.read_h5(ACDC_ROOT / 'data' / f'{vol_name}.h5', num_classes=4)
  assert image.ndim == 3 and image.shape == label.shape
  assert image.min() == 0.0 and image.max() == 1.0
  assert set(np.unique(label)) <= {0, 1, 2, 3}
  # With too few classes the real labels are rejected, naming the values.
  with pytest.raises(DataError, match=r'label values \[3\] outside 0\.\.2'):
    readers.read_h5(ACDC_ROOT / 'data' / f'{vol_name}.h5', num_classes=3)


def test_window_ct_known_values():
  hu = np.array([-2000.0, -79.0, 112.5, 304.0, 3000.0])
  np.testing.assert_allclose(readers.window_ct(hu, (-79.0, 304.0)), [0.0, 0.0, 0.5, 1.0, 1.0],
                             atol=1e-7)
  assert readers.window_ct(hu, (-79.0, 304.0)).dtype == np.float32
  np.testing.assert_allclose(readers.window_ct(np.array([0.0, 50.0, 100.0]), (0, 100)),
                             [0.0, 0.5, 1.0])
  with pytest.raises(ConfigError, match='window'):
    readers.window_ct(hu, (100, 100))
