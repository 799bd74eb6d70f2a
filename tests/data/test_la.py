"""3D data: the phantom, UA-MT's crop and rotation, LA and Pancreas loaders, streams."""

import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.data import datasets, la, pancreas, pipeline, splits, synthetic3d, transforms3d
from jaxseg.errors import ConfigError, DataError

LA_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'LA')


@pytest.fixture
def la_dir():
  """The real LA data beside the checkout (../shared/data/LA), or skip."""
  if not la.is_la_layout(LA_DIR):
    pytest.skip('real LA data not found at ../shared/data/LA')
  return os.path.abspath(LA_DIR)


def config_3d(data_dir='', **data):
  c = config_lib.base_config()
  c.num_classes = 2
  c.class_names = ('target',)
  c.data.dir = data_dir
  c.data.crop_shape = (16, 16, 8)
  c.data.labeled_num = 2
  c.data.holdout_num = 2
  c.data.labeled_batch = 2
  c.data.unlabeled_batch = 2
  c.data.read_threads = 1
  c.data.synthetic3d.update(dict(num_train=6, num_val=1, num_test=1, size=20))
  c.data.update(data)
  return c


# ---------------------------------------------------------------------------------------------
# Phantom and augmentations.


def test_phantom_is_deterministic_and_well_formed():
  a = synthetic3d.make_volume(0, 3, 24)
  b = synthetic3d.make_volume(0, 3, 24)
  np.testing.assert_array_equal(a.image, b.image)
  assert not np.array_equal(a.image, synthetic3d.make_volume(0, 4, 24).image)
  assert a.image.shape == a.label.shape == (24, 24, 24) and a.image.dtype == np.float32
  assert a.image.min() >= 0 and a.image.max() <= 1
  assert set(np.unique(a.label)) == {0, 1}
  # The target is brighter than the background on average (but distractors overlap it).
  assert a.image[a.label == 1].mean() > a.image[a.label == 0].mean() + 0.2


def test_crop_keeps_a_small_volume_whole():
  rng = np.random.default_rng(0)
  for shape in [(10, 9, 5), (16, 20, 8), (3, 30, 2)]:
    label = rng.integers(0, 2, size=shape).astype(np.uint8)
    image, cropped = transforms3d.random_crop(label.astype(np.float32), label, (16, 16, 8), rng)
    assert image.shape == cropped.shape == (16, 16, 8)
    if all(s <= c for s, c in zip(shape, (16, 16, 8))):
      # UA-MT pads (crop - size) // 2 + 3 per side: the whole volume fits in every crop.
      assert cropped.sum() == label.sum()


def test_rot_flip_moves_image_and_label_together():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 3, size=(12, 12, 5)).astype(np.uint8)
  seen = set()
  for _ in range(20):
    image, out = transforms3d.augment(label.astype(np.float32) / 2, label, rng, (8, 8, 4))
    np.testing.assert_array_equal(image * 2, out)
    assert out.dtype == np.int32 and image.dtype == np.float32
  for _ in range(40):
    rotated, _ = transforms3d.random_rot_flip(label, None, rng)
    seen.add(rotated.tobytes())
    # In-plane only: the slice axis (2) is untouched, so slice k stays slice k.
    assert sorted(np.unique(rotated[..., 0])) == sorted(np.unique(label[..., 0]))
  # UA-MT always flips after the rotation, and flip_0(rot_k) = flip_1(rot_k+2): its 8 draws give
  # the 4 in-plane reflections, never the identity.
  assert len(seen) == 4 and label.tobytes() not in seen


def test_two_views_noise():
  element = {'image': np.random.default_rng(0).random((12, 12, 10), dtype=np.float32)}
  same = transforms3d.TwoViews3D((8, 8, 8)).random_map(element, np.random.default_rng(0))
  assert same['image_weak'].shape == (8, 8, 8)
  np.testing.assert_array_equal(same['image_weak'], same['image_strong'])
  noisy = transforms3d.TwoViews3D((8, 8, 8), noise_std=0.1).random_map(
      element, np.random.default_rng(0))
  diff = noisy['image_strong'] - noisy['image_weak']
  assert 0 < np.abs(diff).max() <= 0.2 + 1e-6  # UA-MT clips the noise at 2 sigma
  with pytest.raises(ConfigError, match='data.crop_shape'):
    transforms3d.Crop3D((16, 16))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  for (la_, ua), (lb, ub) in zip(batches_a, batches_b):
    for key in la_:
      np.testing.assert_array_equal(la_[key], lb[key])
    for key in ua:
      np.testing.assert_array_equal(ua[key], ub[key])


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


# ---------------------------------------------------------------------------------------------
# Left atrium, UA-MT layout.


def write_la(root, names, test=(), shape=(20, 18, 12), bad_label=None):
  folder = os.path.join(root, la.CASES_FOLDER)
  rng = np.random.default_rng(0)
  for name in list(names) + list(test):
    os.makedirs(os.path.join(folder, name))
    label = np.zeros(shape, np.uint8)
    label[5:12, 4:10, 3:9] = 1
    if name == bad_label:
      label[0, 0, 0] = 2
    with h5py.File(os.path.join(folder, name, la.CASE_FILE), 'w') as f:
      f['image'] = rng.normal(size=shape).astype(np.float32)
      f['label'] = label
  with open(os.path.join(root, 'train.list'), 'w') as f:
    f.write('\n'.join(names) + '\n')
  if test:
    with open(os.path.join(root, 'test.list'), 'w') as f:
      f.write('\n'.join(test) + '\n')


def test_la_fixture_holdout_split(tmp_path):
  names = [f'CASE{i:02d}' for i in range(7)]
  write_la(tmp_path, names)
  c = config_3d(str(tmp_path))
  assert datasets.detect_layout(str(tmp_path)) == 'la'
  data = datasets.load_data(c)
  data.check(progress=False)
  assert data.layout == 'la'
  assert [v.name for v in data.labeled.volumes] == names[:2]
  assert [v.name for v in data.unlabeled.volumes] == names[2:5]
  assert [v.name for v in data.splits['val']] == names[5:]
  volume = data.labeled.volumes[0]
  assert volume.image.shape == (20, 18, 12) and volume.spacing == la.SPACING
  assert volume.label.sum() == 7 * 6 * 6
  batch, _ = next(pipeline.make_train_iterator(data, c, with_unlabeled=False))
  assert batch['image'].shape == (2, 16, 16, 8)


def test_la_fixture_test_list_validates(tmp_path):
  write_la(tmp_path, ['A', 'B', 'C'], test=['T1', 'T2'])
  data = datasets.load_data(config_3d(str(tmp_path), labeled_num=1))
  assert [v.name for v in data.splits['val']] == ['T1', 'T2']
  assert len(data.labeled) == 1 and len(data.unlabeled) == 2
  assert 'test.list' in data.description


def test_la_errors_are_one_line(tmp_path):
  write_la(tmp_path, ['A', 'B', 'C', 'D'], bad_label='B')
  path = os.path.join(tmp_path, la.CASES_FOLDER, 'B', la.CASE_FILE)
  with pytest.raises(DataError) as e:
    datasets.load_data(config_3d(str(tmp_path), holdout_num=1))
  assert str(e.value).startswith(path) and 'label values [2]' in str(e.value)
  assert '\n' not in str(e.value)
  os.remove(path)
  with pytest.raises(DataError, match=r'mri_norm2.h5: listed in train.list but missing$'):
    datasets.load_data(config_3d(str(tmp_path), holdout_num=1))
  with pytest.raises(DataError, match='holdout_num=4 must be between 1 and 3'):
    splits.holdout_split(['A', 'B', 'C', 'D'], None, 4, 'train.list')
  c = config_3d(str(tmp_path))
  c.num_classes = 3
  with pytest.raises(ConfigError, match='LA has 2 classes'):
    datasets.load_data(c)


def test_la_real_data(la_dir):
  c = config_3d(la_dir, labeled_num=4, holdout_num=4, crop_shape=(112, 112, 80))
  data = datasets.load_data(c)
  assert (len(data.labeled), len(data.unlabeled), len(data.splits['val'])) == (4, 16, 4)
  volume = data.labeled.volumes[0]
  # Stored (x, y, z) order: the 88 MRI slices last, as UA-MT's crop 112x112x80 expects.
  assert volume.image.ndim == 3 and volume.image.shape[2] == 88
  assert set(np.unique(volume.label)) == {0, 1}
  labeled, unlabeled = next(pipeline.make_train_iterator(data, c, with_unlabeled=True))
  assert labeled['image'].shape == labeled['label'].shape == (2, 112, 112, 80)
  assert unlabeled['image_weak'].shape == (2, 112, 112, 80)


# ---------------------------------------------------------------------------------------------
# NIH Pancreas-CT, NIfTI.


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


def test_run_folds_trains_every_fold_and_summarizes(tmp_path, monkeypatch):
  """The fold loop: fold i's config, directory, resume and the summary (training stubbed; the
  splits themselves are tested above, and training is tested on every experiment)."""
  import json
  from jaxseg import run
  from jaxseg.training import loop
  write_la(tmp_path / 'LA', [f'CASE{i:02d}' for i in range(6)])
  trained = []

  def fake_train(config, workdir, *, resume, progress, steps):
    del progress, steps
    trained.append((config.data.folds, config.data.fold, os.path.basename(workdir), resume))
    if resume:  # a finished run: train_and_evaluate gives its results back untouched
      with open(os.path.join(workdir, 'results.json')) as f:
        return json.load(f)
    os.makedirs(workdir)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config_lib.to_json(config))
    results = {'splits': {'val': {'summary': {'dice': {'mean': [0.5 + config.data.fold / 10]}}}}}
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f)
    return results

  monkeypatch.setattr(loop, 'train_and_evaluate', fake_train)
  config = config_3d(str(tmp_path / 'LA'))
  summary = run.train_folds(config, str(tmp_path / 'cv'), 3, resume=False, progress=False)
  assert trained == [(3, 0, 'fold_0', False), (3, 1, 'fold_1', False), (3, 2, 'fold_2', False)]
  np.testing.assert_allclose(summary['dice'], [0.5, 0.6, 0.7])
  np.testing.assert_allclose([summary['mean'], summary['std']], [0.6, np.std([0.5, 0.6, 0.7])])
  assert 'mean ± std over folds: 0.6000' in (tmp_path / 'cv' / 'folds.md').read_text()
  # A resume resumes every fold (a finished one gives its results back); an existing directory
  # needs --resume.
  assert run.train_folds(config, str(tmp_path / 'cv'), 3, resume=True, progress=False) == summary
  assert trained[3:] == [(3, 0, 'fold_0', True), (3, 1, 'fold_1', True), (3, 2, 'fold_2', True)]
  with pytest.raises(ConfigError, match='already exists'):
    run.train_folds(config, str(tmp_path / 'cv'), 3, resume=False, progress=False)
  config.data.dir = ''
  with pytest.raises(ConfigError, match='--folds: K-fold splits exist for the LA and pancreas'):
    run.train_folds(config, str(tmp_path / 'cv2'), 2, resume=False, progress=False)
