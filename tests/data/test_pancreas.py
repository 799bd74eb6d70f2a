"""Tests for jaxseg.data.pancreas: the NIfTI layout, the HU window and the crop."""

import os

import nibabel as nib
import numpy as np
import pytest
from conftest import config_3d

from jaxseg.data import datasets, pancreas
from jaxseg.errors import DataError


def write_pancreas(root, numbers, shape=(80, 70, 60), box=(slice(30, 40), slice(20, 30),
                                                             slice(10, 50)), label_value=1):
  os.makedirs(os.path.join(root, 'image'))
  os.makedirs(os.path.join(root, 'label'))
  affine = np.diag([0.8, 0.8, 1.5, 1.0])
  for number in numbers:
    # HU ramp along x: -300 at x=0 rising 10 HU per voxel, so the window is visible in the data.
    hu = np.broadcast_to(-300.0 + 10.0 * np.arange(shape[0])[:, None, None], shape)
    label = np.zeros(shape, np.uint8)
    label[box] = label_value
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine),
             os.path.join(root, 'image', f'PANCREAS_{number:04d}.nii.gz'))
    nib.save(nib.Nifti1Image(label, affine),
             os.path.join(root, 'label', f'label{number:04d}.nii.gz'))


def test_pancreas_window_and_crop(tmp_path):
  write_pancreas(tmp_path, [1, 2, 3, 4])
  assert datasets.detect_layout(str(tmp_path)) == 'pancreas'
  c = config_3d(str(tmp_path), labeled_num=1, holdout_num=1)
  data = datasets.load_data(c)
  assert data.layout == 'pancreas'
  assert [v.name for v in data.labeled.volumes] == ['PANCREAS_0001']
  assert [v.name for v in data.splits['val']] == ['PANCREAS_0004']
  volume = data.labeled.volumes[0]
  # Box [30:40, 20:30, 10:50] + 25 voxels, clamped: [5:65, 0:55, 0:60].
  assert volume.image.shape == (60, 55, 60)
  assert volume.label.sum() == 10 * 10 * 40
  np.testing.assert_array_equal(np.nonzero(volume.label.any(axis=(1, 2)))[0], np.arange(25, 35))
  # x = 5 + i has HU -250 + 10 i; the window -120..240 maps linearly to 0..1 and clips.
  hu = -250.0 + 10.0 * np.arange(60)
  np.testing.assert_allclose(volume.image[:, 0, 0], np.clip((hu + 120) / 360, 0, 1), atol=1e-6)
  assert volume.image.min() == 0.0 and volume.image.max() == 1.0
  # The affine follows the crop: voxel (0, 0, 0) is the original voxel (5, 0, 0).
  np.testing.assert_allclose(volume.affine[:3, 3], [5 * 0.8, 0, 0])
  assert volume.spacing == pytest.approx((0.8, 0.8, 1.5))


def test_pancreas_errors_are_one_line(tmp_path):
  write_pancreas(tmp_path, [1, 2, 3], label_value=2)
  label_path = os.path.join(tmp_path, 'label', 'label0001.nii.gz')
  with pytest.raises(DataError) as e:
    datasets.load_data(config_3d(str(tmp_path), labeled_num=1, holdout_num=1))
  assert str(e.value).startswith(label_path) and 'outside 0..1' in str(e.value)
  os.remove(os.path.join(tmp_path, 'label', 'label0002.nii.gz'))
  with pytest.raises(DataError, match=r'label0002.nii.gz: missing \(case PANCREAS_0002\)'):
    datasets.load_data(config_3d(str(tmp_path), labeled_num=1, holdout_num=1))
  with pytest.raises(DataError, match='no pancreas voxels'):
    pancreas.crop_box(np.zeros((4, 4, 4)), 25, 'x.nii.gz')
