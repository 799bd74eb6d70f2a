"""jaxseg.data.nnunet on generated nnU-Net raw trees: loading (2D and 3D), splits, channels,
the data check's findings, and a 2D run, a 3D run and a prediction of imagesTs end to end."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import data_config, tiny_config, write_nnunet_tree

from jaxseg.data import check, datasets, nnunet
from jaxseg.errors import ConfigError, DataError


def _config(root, **data):
  return datasets.resolve_config(data_config(root, 4, read_threads=1, holdout_num=1, **data))


def test_detected_and_classes_adopted(tmp_path):
  root = write_nnunet_tree(tmp_path)
  assert datasets.detect_layout(str(root)) == 'nnunet'
  config = _config(root)
  assert config.num_classes == 3 and config.class_names == ('inner', 'outer')
  assert dict(config.data.nnunet) == {'channel': -1, 'val_fraction': 0.2}
  assert 'kits19' not in config.data and 'msd' not in config.data


def test_2d_slices_along_the_largest_spacing(tmp_path):
  root = write_nnunet_tree(tmp_path, num_cases=5)
  data = datasets.load_data(_config(root, labeled_num=2))
  assert data.layout == 'nnunet' and len(data.splits['val']) == 1  # 20% of 5
  volume = data.splits['val'][0]
  # Stored (X, Y, Z) = (32, 32, 16) with Z the coarsest: 16 slices of 32x32.
  assert volume.image.shape == (16, 32, 32)
  np.testing.assert_allclose(volume.spacing, (2.5, 0.8, 0.8), rtol=1e-6)
  stored = np.asarray(nib.load(str(root / 'labelsTr' / f'{volume.name}.nii.gz')).dataobj)
  np.testing.assert_array_equal(volume.label, stored.transpose(2, 0, 1))
  assert 0.0 <= volume.image.min() and volume.image.max() <= 1.0
  assert len(data.labeled) == 2 * 16 and len(data.unlabeled) == 2 * 16  # 2 + 2 cases of 16


def test_3d_with_a_crop_shape(tmp_path):
  root = write_nnunet_tree(tmp_path)
  data = datasets.load_data(_config(root, crop_shape=(8, 16, 16), labeled_num=1))
  assert data.labeled[0]['image'].shape == (16, 32, 32)  # whole volumes; the pipeline crops


def test_splits_file_fold(tmp_path):
  root = write_nnunet_tree(tmp_path)
  folds = [{'train': ['case_000', 'case_001'], 'val': ['case_002', 'case_003']},
           {'train': ['case_002', 'case_003', 'case_001'], 'val': ['case_000']}]
  (root / 'splits_final.json').write_text(json.dumps(folds))
  data = datasets.load_data(_config(root, fold=1))
  assert data.splits['val'].names == ['case_000']
  with pytest.raises(ConfigError, match=r'data.fold=2: .*splits_final.json has folds 0..1'):
    datasets.load_data(_config(root, fold=2))


def test_seeded_split_changes_with_the_seed(tmp_path):
  root = write_nnunet_tree(tmp_path, num_cases=5)
  val = {seed: nnunet.split_cases(str(root), [f'case_{i:03d}' for i in range(5)],
                                  _config(root, split_seed=seed))[0]['val'] for seed in range(4)}
  assert all(len(v) == 1 for v in val.values()) and len({tuple(v) for v in val.values()}) > 1


def test_several_channels_need_a_choice(tmp_path):
  root = write_nnunet_tree(tmp_path, channels=2)
  with pytest.raises(ConfigError, match=r'2 input channels \(0 MR0, 1 MR1\).*data.nnunet.channel'):
    datasets.load_data(_config(root))
  data = datasets.load_data(_config(root, nnunet={'channel': 1}))
  assert data.splits['val'][0].path.endswith('_0001.nii.gz')


def test_check_lists_each_problem_by_file(tmp_path):
  root = write_nnunet_tree(tmp_path, num_cases=5, channels=2)
  (root / 'imagesTr' / 'case_001_0001.nii.gz').unlink()  # a missing channel
  (root / 'labelsTr' / 'case_002.nii.gz').unlink()  # a missing label
  bad = nib.load(str(root / 'labelsTr' / 'case_003.nii.gz'))
  values = np.asarray(bad.dataobj).copy()
  values[0, 0, 0] = 7  # not in dataset.json
  nib.save(nib.Nifti1Image(values, bad.affine), str(root / 'labelsTr' / 'case_003.nii.gz'))
  moved = nib.load(str(root / 'imagesTr' / 'case_004_0001.nii.gz'))
  affine = moved.affine.copy()
  affine[0, 3] += 5.0  # channel 1 shifted against its label
  nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), affine),
           str(root / 'imagesTr' / 'case_004_0001.nii.gz'))
  small = np.zeros((32, 32, 8), np.float32)
  nib.save(nib.Nifti1Image(small, moved.affine), str(root / 'imagesTr' / 'case_000_0001.nii.gz'))
  meta = json.loads((root / 'dataset.json').read_text())
  meta['numTraining'] = 9
  (root / 'dataset.json').write_text(json.dumps(meta))

  result = check.check_data(str(root))
  problems = '\n'.join(result.problems)
  assert result.layout == 'nnunet' and result.num_classes == 3
  assert f'{root}/imagesTr/case_001_0001.nii.gz: missing (channel 0001 of case case_001' in problems
  assert f'{root}/labelsTr/case_002.nii.gz: missing (label of case case_002)' in problems
  assert f'{root}/dataset.json: "numTraining" is 9, imagesTr holds 5 cases' in problems
  assert (f'{root}/labelsTr/case_003.nii.gz: label values [7] not in dataset.json "labels" '
          '(0..2)') in problems
  assert f'{root}/imagesTr/case_004_0001.nii.gz: affine differs from its label' in problems
  assert (f'{root}/imagesTr/case_000_0001.nii.gz: shape (32, 32, 8) differs from its label '
          'case_000.nii.gz (32, 32, 16)') in problems
  assert len(result.problems) == 6 and all('\n' not in p for p in result.problems)
  assert check.main(['--data-dir', str(root), '--no-progress']) == 2


def test_check_of_a_good_tree_passes(tmp_path, capsys):
  root = write_nnunet_tree(tmp_path)
  assert check.main(['--data-dir', str(root), '--no-progress']) == 0
  assert 'layout nnunet, 3 classes' in capsys.readouterr().out


def test_bad_dataset_json_is_one_line(tmp_path):
  root = write_nnunet_tree(tmp_path)
  meta = json.loads((root / 'dataset.json').read_text())
  meta['labels'] = {'background': 0, 'tumour': 2}
  (root / 'dataset.json').write_text(json.dumps(meta))
  with pytest.raises(DataError, match=r'dataset.json: "labels" values must be 0..1, each once'):
    nnunet.read_dataset_json(str(root))


def test_2d_run_and_predict_imagesTs_keep_the_geometry(tmp_path):
  from jaxseg import predict, run  # noqa: PLC0415
  root = write_nnunet_tree(tmp_path)
  workdir = tmp_path / 'run'
  assert run.main(['--experiment', 'smoke', '--data-dir', str(root), '--workdir', str(workdir),
                   '--steps', '2', '--no-progress', '--set', 'report=False']) == 0
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['num_classes'] == 3 and 'nnunet' in saved['data']
  assert not {'kits19', 'msd', 'synthetic', 'synthetic3d'} & set(saved['data'])
  out = tmp_path / 'pred'
  assert predict.main(['--workdir', str(workdir), '--input', str(root / 'imagesTs'),
                       '--output', str(out), '--no-progress']) == 0
  source = nib.load(str(root / 'imagesTs' / 'case_004_0000.nii.gz'))
  pred = nib.load(str(out / 'case_004_0000_pred.nii.gz'))
  assert pred.shape == source.shape
  np.testing.assert_allclose(pred.affine, source.affine)
  assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_3d_run(tmp_path):
  from jaxseg.training import loop  # noqa: PLC0415
  root = write_nnunet_tree(tmp_path)
  config = tiny_config('la_meanteacher', dir=str(root), labeled_num=1)
  results = loop.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  dice = results['splits']['val']['summary']['dice']['mean']
  assert len(dice) == 2  # two foreground classes, adopted from dataset.json
