"""Tests for the built-in synthetic cardiac phantom."""

from __future__ import annotations

import numpy as np
import pytest

from jaxseg.data import synthetic
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError

_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


@pytest.fixture(scope='module')
def dataset() -> dict[str, list[Volume]]:
  # The default dataset is generated once: it is what users get without a data directory.
  return synthetic.make_dataset()


def _all_volumes(dataset: dict[str, list[Volume]]) -> list[Volume]:
  return [v for split in ('train', 'val', 'test') for v in dataset[split]]


def _mid_slices(num_slices: int) -> range:
  return range(num_slices // 4, num_slices // 2 + 1)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """Neighbour values of a (D, H, W) array; outside the image counts as background."""
  p = np.pad(a, ((0, 0), (1, 1), (1, 1)))
  h, w = a.shape[1:]
  return p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def test_deterministic_for_seed_and_index():
  a = synthetic.make_volume(3, 5)
  b = synthetic.make_volume(3, 5)
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.label, b.label)
  np.testing.assert_array_equal(a.affine, b.affine)
  assert a.spacing == b.spacing
  assert a.name == b.name == 'synth005'


def test_different_index_or_seed_gives_different_volume():
  a = synthetic.make_volume(0, 1)
  for other in (synthetic.make_volume(0, 2), synthetic.make_volume(1, 1)):
    assert not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.label, other.label)


@pytest.mark.parametrize('num_slices,size', [(8, 128), (5, 64), (12, 96)])
def test_shapes_dtypes_and_ranges(num_slices: int, size: int):
  vol = synthetic.make_volume(0, 7, num_slices=num_slices, size=size)
  assert vol.image.shape == vol.label.shape == (num_slices, size, size)
  assert vol.num_slices == num_slices
  assert vol.image.dtype == np.float32
  assert vol.label.dtype == np.uint8
  assert vol.image.min() == pytest.approx(0.0, abs=1e-6)
  assert vol.image.max() == pytest.approx(1.0, abs=1e-6)
  assert set(np.unique(vol.label)) <= {0, 1, 2, 3}
  assert np.isfinite(vol.image).all()
  assert vol.path == ''


def test_spacing_and_affine_agree():
  vol = synthetic.make_volume(0, 0)
  assert len(vol.spacing) == 3
  assert vol.spacing[0] == pytest.approx(10.0)
  assert 1.0 < vol.spacing[1] == vol.spacing[2] < 2.0
  assert vol.affine.shape == (4, 4)
  np.testing.assert_allclose(np.diag(vol.affine)[:3], vol.spacing)
  np.testing.assert_array_equal(vol.affine[3], [0, 0, 0, 1])


def test_field_of_view_is_independent_of_size():
  small, large = synthetic.make_volume(0, 3, size=64), synthetic.make_volume(0, 3, size=256)
  assert small.spacing[1] * 64 == pytest.approx(large.spacing[1] * 256, rel=1e-3)


def test_every_class_in_mid_ventricular_slices(dataset):
  for vol in _all_volumes(dataset):
    for z in _mid_slices(vol.num_slices):
      assert set(np.unique(vol.label[z])) == {0, 1, 2, 3}, (vol.name, z)


@pytest.mark.parametrize('num_slices', [3, 6, 12])
def test_every_class_in_mid_slices_for_other_depths(num_slices: int):
  for index in range(6):
    vol = synthetic.make_volume(1, index, num_slices=num_slices)
    for z in _mid_slices(num_slices):
      assert set(np.unique(vol.label[z])) == {0, 1, 2, 3}, (vol.name, z)


def test_myocardium_encloses_lv_cavity(dataset):
  # By construction every 4-neighbour of an LV pixel is LV or MYO: never RV or background.
  for vol in _all_volumes(dataset):
    lv = vol.label == synthetic.LV
    for dy, dx in _NEIGHBOURS:
      nb = _shift(vol.label, dy, dx)[lv]
      assert np.isin(nb, (synthetic.LV, synthetic.MYO)).all(), vol.name


def test_rv_shares_the_septal_wall(dataset):
  for vol in _all_volumes(dataset):
    for z in _mid_slices(vol.num_slices):
      rv = vol.label[z:z + 1] == synthetic.RV
      touches_myo = np.zeros_like(rv)
      for dy, dx in _NEIGHBOURS:
        touches_myo |= _shift(vol.label[z:z + 1], dy, dx) == synthetic.MYO
      assert (rv & touches_myo).any(), (vol.name, z)


def test_heart_stays_inside_the_image(dataset):
  for vol in _all_volumes(dataset):
    edges = np.concatenate([vol.label[:, 0], vol.label[:, -1], vol.label[:, :, 0],
                            vol.label[:, :, -1]], axis=1)
    assert (edges == 0).all(), vol.name


def test_structures_shrink_toward_apex(dataset):
  vols = _all_volumes(dataset)
  for vol in vols:
    area = (vol.label > 0).sum(axis=(1, 2))
    assert area[-1] < area[0], vol.name
  # The RV ends before the LV: it is missing from the apical slice in most subjects.
  rv_at_apex = np.mean([(v.label[-1] == synthetic.RV).any() for v in vols])
  assert rv_at_apex < 0.5


def test_intensity_alone_does_not_segment_the_lv(dataset):
  # Distractors (fat, aorta, stomach) overlap the blood pool intensity in every volume.
  for vol in _all_volumes(dataset):
    lv = vol.label == synthetic.LV
    lo, hi = np.percentile(vol.image[lv], [10, 90])
    background = vol.label == 0
    confusable = (background & (vol.image >= lo) & (vol.image <= hi)).sum()
    assert confusable > 0.1 * lv.sum(), vol.name


def test_subjects_vary(dataset):
  vols = dataset['train']
  lv_area = [(v.label[v.num_slices // 2] == synthetic.LV).sum() for v in vols]
  assert max(lv_area) > 2 * min(lv_area)
  centroids = np.array([np.argwhere(v.label[v.num_slices // 2] > 0).mean(axis=0) for v in vols])
  assert centroids.std(axis=0).min() > 3.0


def test_splits_are_disjoint_and_sized(dataset):
  assert {k: len(v) for k, v in dataset.items()} == {'train': 40, 'val': 8, 'test': 8}
  names = [v.name for v in _all_volumes(dataset)]
  assert len(set(names)) == len(names)
  train_images = {v.image.tobytes() for v in dataset['train']}
  for split in ('val', 'test'):
    assert not train_images & {v.image.tobytes() for v in dataset[split]}


def test_small_dataset_matches_make_volume():
  ds = synthetic.make_dataset(seed=4, num_train=2, num_val=1, num_test=1, num_slices=4, size=64)
  assert [v.name for v in ds['train']] == ['synth000', 'synth001']
  assert [v.name for v in ds['val']] == ['synth002']
  assert [v.name for v in ds['test']] == ['synth003']
  ref = synthetic.make_volume(4, 2, num_slices=4, size=64)
  np.testing.assert_array_equal(ds['val'][0].image, ref.image)


@pytest.mark.parametrize('kwargs', [{'num_slices': 0}, {'size': 8}, {'index': -1}])
def test_invalid_volume_arguments(kwargs: dict):
  args = {'seed': 0, 'index': 0, **kwargs}
  with pytest.raises(ConfigError):
    synthetic.make_volume(**args)


def test_invalid_split_size():
  with pytest.raises(ConfigError):
    synthetic.make_dataset(num_val=-1)
