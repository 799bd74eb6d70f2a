"""`jaxseg.data.check`: statistics of a good folder, and every planted problem named by file, in
the SSL4MIS h5 and ACDC NIfTI layouts; the real ACDC folder has none."""

from __future__ import annotations

import contextlib
import io
import pathlib

import h5py
import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import check

D, H, W = 3, 24, 20
TRAIN = ('patient001', 'patient002')
VAL = ('patient003',)


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
  image = np.random.default_rng(seed).random((D, H, W)).astype(np.float32)
  label = np.zeros((D, H, W), np.uint8)
  label[:, 4:10, 4:8], label[:, 10:14, 4:8], label[:, 14:18, 4:8] = 1, 2, 3
  return image, label


def _write_h5(path: pathlib.Path, **arrays) -> None:
  with h5py.File(path, 'w') as f:
    for key, value in arrays.items():
      f.create_dataset(key, data=value)


@pytest.fixture
def ssl4mis(tmp_path) -> pathlib.Path:
  root = tmp_path / 'ACDC'
  (root / 'data' / 'slices').mkdir(parents=True)
  slices = []
  for i, patient in enumerate(TRAIN + VAL):
    image, label = _volume(i)
    name = f'{patient}_frame01'
    if patient in VAL:
      _write_h5(root / 'data' / f'{name}.h5', image=image, label=label)
      continue
    for z in range(D):
      _write_h5(root / 'data' / 'slices' / f'{name}_slice_{z}.h5', image=image[z], label=label[z])
      slices.append(f'{name}_slice_{z}')
  (root / 'train_slices.list').write_text('\n'.join(slices) + '\n')
  (root / 'val.list').write_text('patient003_frame01\n')
  return root


def _call(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = check.main([str(a) for a in argv] + ['--no-progress'])
  return rc, out.getvalue(), err.getvalue()


def test_good_ssl4mis_folder(ssl4mis):
  rc, out, err = _call(['--data-dir', ssl4mis])
  assert rc == 0, out + err
  assert f'{ssl4mis}: layout ssl4mis_h5, 4 classes' in out
  assert f'train: 6 slices; shapes {(H, W)} x6; intensity 9.604e-05..0.9998;' in out
  assert f'val: 1 volumes; shapes {(D, H, W)}' in out and 'label values [0, 1, 2, 3]' in out
  assert 'no problems found' in out


def _truncate(path):
  path.write_bytes(path.read_bytes()[:100])


def _set_label(path, value):
  with h5py.File(path, 'r+') as f:
    label = f['label'][()]
    label[0, 0] = value
    f['label'][...] = label


def _cut_label(path):
  with h5py.File(path, 'r+') as f:
    label = f['label'][()]
    del f['label']
    f.create_dataset('label', data=label[:, :-2])


def test_every_planted_problem_is_named(ssl4mis):
  slices = ssl4mis / 'data' / 'slices'
  missing = slices / 'patient001_frame01_slice_0.h5'
  truncated = slices / 'patient001_frame01_slice_1.h5'
  out_of_range = slices / 'patient002_frame01_slice_0.h5'
  mismatch = slices / 'patient002_frame01_slice_2.h5'
  missing_volume = ssl4mis / 'data' / 'patient003_frame01.h5'
  missing.unlink()
  _truncate(truncated)
  _set_label(out_of_range, 7)
  _cut_label(mismatch)
  missing_volume.unlink()
  (slices / 'stray_slice_0.h5').write_bytes(b'')
  result = check.check_data(str(ssl4mis))
  expected = {
      missing: 'listed in train_slices.list but missing',
      truncated: 'not a readable HDF5 file',
      out_of_range: 'label values [7] outside 0..3',
      mismatch: 'label shape (24, 18) differs from image shape (24, 20)',
      missing_volume: 'listed in val.list but missing',
  }
  assert len(result.problems) == len(expected), result.problems
  for path, words in expected.items():
    assert any(p.startswith(f'{path}: ') and words in p for p in result.problems), (path, words)
  assert result.splits['train'].count == 2  # the 6 listed slices less the 4 bad ones
  assert any('1 slice files not in train_slices.list' in w for w in result.warnings)
  rc, out, err = _call(['--data-dir', ssl4mis])
  assert rc == 2
  assert 'problems (5, each would stop training):' in out
  assert err.strip() == (f'error: 5 problem(s) in {ssl4mis} would stop training (listed above)')


def test_missing_list_and_unknown_folder(ssl4mis, tmp_path):
  (ssl4mis / 'val.list').unlink()
  result = check.check_data(str(ssl4mis))
  assert result.problems == [f'{ssl4mis / "val.list"}: list file is missing']
  (tmp_path / 'other').mkdir()
  rc, _, err = _call(['--data-dir', tmp_path / 'other'])
  assert rc == 2 and err.startswith(f'error: {tmp_path / "other"}: unknown data layout')


def _acdc_patient(root: pathlib.Path, pid: str, seed: int) -> pathlib.Path:
  folder = root / pid
  folder.mkdir(parents=True)
  (folder / 'Info.cfg').write_text('ED: 1\nES: 4\n')
  affine = np.diag([1.5, 1.5, 10.0, 1.0])
  for frame in (1, 4):
    image, label = _volume(seed + frame)
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0) * 100, affine),
             folder / f'{pid}_frame{frame:02d}.nii.gz')
    nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine),
             folder / f'{pid}_frame{frame:02d}_gt.nii.gz')
  return folder


def test_acdc_nifti_goes_past_a_bad_file(tmp_path):
  root = tmp_path / 'acdc'
  _acdc_patient(root, 'patient099', 0)  # SSL4MIS training patients
  bad = _acdc_patient(root, 'patient038', 10) / 'patient038_frame04_gt.nii.gz'
  _acdc_patient(root, 'patient028', 20)  # validation
  gt = nib.load(bad)
  data = np.asarray(gt.dataobj).copy()
  data[0, 0, 0] = 9
  nib.save(nib.Nifti1Image(data, gt.affine), bad)
  result = check.check_data(str(root))
  assert result.layout == 'acdc_nifti'
  assert len(result.problems) == 1 and result.problems[0].startswith(f'{bad}: label values [9]')
  # The training loader would have stopped at the bad frame; the check reads the other three.
  assert result.splits['train'].count == 3 and result.splits['val'].count == 2
  assert result.splits['train'].spacings == {(10.0, 1.5, 1.5): 3}
  assert 'spacing (10.0, 1.5, 1.5) mm x3' in result.splits['train'].describe()
  assert any('test patients absent' in w for w in result.warnings)


def test_real_acdc_has_no_problems(acdc_dir):
  result = check.check_data(acdc_dir)
  assert result.problems == []
  assert result.layout == 'ssl4mis_h5'
  assert result.splits['train'].count == 1312 and result.splits['train'].kind == 'slices'
  assert result.splits['val'].count == 20 and result.splits['val'].kind == 'volumes'
  assert result.splits['train'].labels == {0, 1, 2, 3} == result.splits['val'].labels
  assert 0.0 <= result.splits['train'].low and result.splits['train'].high <= 1.0
