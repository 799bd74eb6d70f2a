"""`jaxseg.predict`: NIfTI predictions keep the input's affine, header and axis order; h5 inputs,
probabilities, folders with a bad file, no overwriting, and checkpoint choice."""

from __future__ import annotations

import pathlib

import h5py
import nibabel as nib
import numpy as np
import pytest

from jaxseg import predict
from jaxseg.data import datasets, spec
from jaxseg.evaluation import inference
from jaxseg.training import runs

from conftest import call, tiny_config

SIZE = 32  # eval.patch_size of the tiny run: slices of this size are not resized
K = 4


def _affine() -> np.ndarray:
  """Oblique, anisotropic, shifted: any axis mix-up changes it."""
  c, s = np.cos(0.3), np.sin(0.3)
  affine = np.diag([0.8, 1.3, 6.0, 1.0])
  affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
  affine[:3, 3] = [-12.5, 40.0, 7.25]
  return affine


def _write_nifti(path: pathlib.Path, shape=(SIZE, SIZE, 5), seed=0) -> np.ndarray:
  """An int16 NIfTI with scaling, asymmetric content; returns the stored (scaled) array."""
  rng = np.random.default_rng(seed)
  data = rng.integers(0, 1000, shape).astype(np.int16)
  data[:shape[0] // 3] = 0  # asymmetric along x
  image = nib.Nifti1Image(data, _affine())
  image.header.set_qform(_affine(), code=1)
  image.header.set_slope_inter(2.0, -3.0)
  image.header['descrip'] = b'test input'
  nib.save(image, path)
  return np.asarray(nib.load(path).get_fdata())


def _threshold_run() -> runs.RestoredRun:
  """A stand-in model: class 1 where the (normalized) intensity is >= 0.5, else 0."""
  config = tiny_config()
  with config.unlocked():
    config.eval.patch_size = SIZE

  def logits_fn(x_BHWC):
    on = (x_BHWC[..., 0] >= 0.5).astype(np.float32)
    return np.stack([1 - on, on] + [np.zeros_like(on)] * (K - 2), axis=-1)
  return runs.RestoredRun('', config, None, None, 0, {}, logits_fn)


def _call(argv) -> tuple[int, str, str]:
  return call(predict.main, list(argv) + ['--no-progress'])


@pytest.fixture
def run_dir(finished_run):
  return finished_run


# --- geometry, with a stand-in model whose answer is known ----------------------------------


def test_nifti_prediction_keeps_affine_header_and_axis_order(tmp_path):
  stored = _write_nifti(tmp_path / 'case.nii.gz')
  paths = predict.output_paths(str(tmp_path / 'case.nii.gz'), str(tmp_path), str(tmp_path / 'out'))
  predict.predict_file(_threshold_run(), str(tmp_path / 'case.nii.gz'), paths,
                       dataset=datasets.BY_NAME['acdc_nifti'])
  out = nib.load(paths['pred'])
  np.testing.assert_allclose(out.affine, _affine(), atol=1e-6)
  np.testing.assert_allclose(out.header.get_qform(), _affine(), atol=1e-6)
  assert out.header['descrip'].tobytes().rstrip(b'\0') == b'test input'
  assert out.shape == stored.shape and out.get_data_dtype() == np.uint8
  labels = np.asarray(out.dataobj)
  # Class indices stored raw: the input's slope 2 / intercept -3 must not apply to them.
  assert set(np.unique(labels)) == {0, 1}
  expected = (stored - stored.min()) / (stored.max() - stored.min()) >= 0.5
  np.testing.assert_array_equal(labels, expected.astype(np.uint8))


def test_kits_convention_keeps_the_stored_order(tmp_path):
  stored = _write_nifti(tmp_path / 'ct.nii', shape=(3, SIZE, SIZE))
  paths = predict.output_paths(str(tmp_path / 'ct.nii'), str(tmp_path), str(tmp_path))
  run = _threshold_run()
  with run.config.unlocked():
    run.config.data.kits19.window = (0.0, 2000.0)
  predict.predict_file(run, str(tmp_path / 'ct.nii'), paths,
                       dataset=datasets.BY_NAME['kits19'])
  labels = np.asarray(nib.load(paths['pred']).dataobj)
  np.testing.assert_array_equal(labels, (np.clip(stored / 2000.0, 0, 1) >= 0.5).astype(np.uint8))


def test_probabilities_are_a_4d_nifti_summing_to_one(tmp_path):
  stored = _write_nifti(tmp_path / 'case.nii.gz')
  paths = predict.output_paths(str(tmp_path / 'case.nii.gz'), str(tmp_path), str(tmp_path))
  predict.predict_file(_threshold_run(), str(tmp_path / 'case.nii.gz'), paths,
                       dataset=datasets.BY_NAME[predict.DEFAULT_LAYOUT], probabilities=True)
  prob = nib.load(paths['prob'])
  assert prob.shape == stored.shape + (K,)
  np.testing.assert_allclose(prob.affine, _affine(), atol=1e-6)
  p = prob.get_fdata()
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  labels = np.asarray(nib.load(paths['pred']).dataobj)
  np.testing.assert_array_equal(p.argmax(-1), labels)


def test_h5_volume_written_in_stored_order_with_its_image(tmp_path):
  rng = np.random.default_rng(1)
  image = rng.random((3, SIZE, SIZE)).astype(np.float32)
  with h5py.File(tmp_path / 'vol.h5', 'w') as f:
    f.create_dataset('image', data=image)
  paths = predict.output_paths(str(tmp_path / 'vol.h5'), str(tmp_path), str(tmp_path / 'o'))
  written = predict.predict_file(_threshold_run(), str(tmp_path / 'vol.h5'), paths,
                                 dataset=datasets.BY_NAME[predict.DEFAULT_LAYOUT])
  assert sorted(written) == sorted([paths['pred'], paths['image']])
  pred, img = nib.load(paths['pred']), nib.load(paths['image'])
  np.testing.assert_array_equal(pred.affine, np.eye(4))
  np.testing.assert_array_equal(np.asarray(pred.dataobj), (image >= 0.5).astype(np.uint8))
  np.testing.assert_allclose(img.get_fdata(), image, atol=1e-6)


# --- the command line on a real tiny run ----------------------------------------------------


def test_folder_with_a_bad_file_goes_on_and_names_it(run_dir, tmp_path):
  inputs = tmp_path / 'in'
  (inputs / 'sub').mkdir(parents=True)
  _write_nifti(inputs / 'a.nii.gz')
  _write_nifti(inputs / 'sub' / 'b.nii', seed=1)
  (inputs / 'broken.nii.gz').write_bytes(b'not a nifti')
  rc, out, err = _call(['--workdir', run_dir, '--input', inputs, '--output', tmp_path / 'out'])
  assert rc == 2
  assert f'failed: {inputs / "broken.nii.gz"}: not a readable NIfTI' in err
  assert err.strip().splitlines()[-1].startswith('error: 1 of 3 files failed')
  for path in (tmp_path / 'out' / 'a_pred.nii.gz', tmp_path / 'out' / 'sub' / 'b_pred.nii.gz'):
    np.testing.assert_allclose(nib.load(path).affine, _affine(), atol=1e-6)
  assert not (tmp_path / 'out' / 'broken_pred.nii.gz').exists()


def test_existing_output_is_kept_without_overwrite(run_dir, tmp_path):
  _write_nifti(tmp_path / 'a.nii.gz')
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'a_pred.nii.gz').write_bytes(b'keep me')
  argv = ['--workdir', run_dir, '--input', tmp_path / 'a.nii.gz', '--output', out]
  rc, _, err = _call(argv)
  assert rc == 2 and 'already exists' in err and '--overwrite' in err
  assert (out / 'a_pred.nii.gz').read_bytes() == b'keep me'
  rc, _, err = _call(argv + ['--overwrite', '--checkpoint', 'last'])
  assert rc == 0, err
  assert nib.load(out / 'a_pred.nii.gz').shape == (SIZE, SIZE, 5)


def test_cli_prediction_matches_the_run_evaluation(run_dir, tmp_path):
  stored = _write_nifti(tmp_path / 'a.nii.gz')
  rc, _, err = _call(['--workdir', run_dir, '--input', tmp_path / 'a.nii.gz',
                      '--output', tmp_path, '--checkpoint', '2'])
  assert rc == 0, err
  run = runs.open_run(str(run_dir), '2')
  image = spec.minmax(stored).transpose(2, 1, 0)
  expected = inference.predict(run.logits_fn, image, run.config).transpose(2, 1, 0)
  np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / 'a_pred.nii.gz').dataobj), expected)


def test_unknown_checkpoint_step_lists_the_saved_ones(run_dir, tmp_path):
  _write_nifti(tmp_path / 'a.nii.gz')
  rc, _, err = _call(['--workdir', run_dir, '--input', tmp_path / 'a.nii.gz',
                      '--output', tmp_path, '--checkpoint', '99'])
  assert rc == 2
  assert 'no checkpoint at step 99' in err and 'saved steps: 1, 2, 3, 4' in err
  assert not (tmp_path / 'a_pred.nii.gz').exists()


def test_missing_input_and_run(tmp_path, run_dir):
  rc, _, err = _call(['--workdir', run_dir, '--input', tmp_path / 'nothing', '--output', tmp_path])
  assert rc == 2 and f'{tmp_path / "nothing"}: input not found' in err
  _write_nifti(tmp_path / 'a.nii.gz')
  rc, _, err = _call(['--workdir', tmp_path / 'norun', '--input', tmp_path / 'a.nii.gz',
                      '--output', tmp_path / 'o'])
  assert rc == 2 and 'config.json' in err
