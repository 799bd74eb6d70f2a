"""Tests for jaxseg.data.la: the UA-MT layout, its held-out and K-fold splits, the fold runs."""

import os

import h5py
import numpy as np
import pytest

from conftest import config_3d

from jaxseg import config as config_lib
from jaxseg.data import datasets, la, pipeline, splits
from jaxseg.errors import ConfigError, DataError

LA_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'LA')


@pytest.fixture
def la_dir():
  """The real LA data beside the checkout (../shared/data/LA), or skip."""
  if not la.is_la_layout(LA_DIR):
    pytest.skip('real LA data not found at ../shared/data/LA')
  return os.path.abspath(LA_DIR)


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
