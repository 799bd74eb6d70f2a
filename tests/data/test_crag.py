"""Tests for jaxseg.data.crag on a tiny fixture in the official layout."""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
import pytest
from conftest import data_config
from PIL import Image

from jaxseg.data import crag, datasets
from jaxseg.data.sources import SegmentationData
from jaxseg.errors import ConfigError, DataError

CRAG_HW = (32, 40)


def _crag_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(100 + index)
  rgb = rng.integers(0, 256, size=CRAG_HW + (3,)).astype(np.uint8)
  instances = np.zeros(CRAG_HW, np.uint16)
  instances[2:10, 3:12] = 1
  instances[15:25, 20:35] = 7  # instance ids need not be consecutive
  instances[28:31, 2:5] = 300  # nor fit in 8 bits
  return rgb, instances


def _write_crag(root: pathlib.Path, num_train: int = 7, num_valid: int = 3) -> pathlib.Path:
  for subset, prefix, n in (('train', 'train', num_train), ('valid', 'test', num_valid)):
    (root / subset / 'Images').mkdir(parents=True)
    (root / subset / 'Annotation').mkdir(parents=True)
    for i in range(n):
      rgb, instances = _crag_arrays(i + (0 if subset == 'train' else 50))
      Image.fromarray(rgb).save(root / subset / 'Images' / f'{prefix}_{i + 1}.png')
      Image.fromarray(instances).save(root / subset / 'Annotation' / f'{prefix}_{i + 1}.png')
  return root


def _config(data_dir: pathlib.Path, num_classes: int, **data) -> ml_collections.ConfigDict:
  return data_config(data_dir, num_classes, image_order=0, **data)


@pytest.fixture
def crag_root(tmp_path):
  return _write_crag(tmp_path / 'CRAG')


def test_crag_layout_detection(tmp_path, crag_root):
  assert crag.is_crag_layout(crag_root)
  assert list(crag.find_images(crag_root)) == sorted(
    [f'train_{i}' for i in range(1, 8)] + [f'test_{i}' for i in range(1, 4)])
  assert not crag.is_crag_layout(tmp_path / 'missing')
  (tmp_path / 'empty' / 'train' / 'Images').mkdir(parents=True)
  assert not crag.is_crag_layout(tmp_path / 'empty')


def test_crag_load_image_binarizes_instances(crag_root):
  volume = crag.load_image(str(crag_root / 'train' / 'Images' / 'train_2.png'))
  rgb, instances = _crag_arrays(1)
  assert volume.name == 'train_2'
  assert volume.image.shape == (1,) + CRAG_HW and volume.image.dtype == np.float32
  luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
  np.testing.assert_allclose(volume.image[0], luma, atol=1e-6)
  np.testing.assert_array_equal(volume.label[0], (instances > 0).astype(np.uint8))
  assert volume.label.dtype == np.uint8 and set(np.unique(volume.label)) == {0, 1}
  rgb_volume = crag.load_image(str(crag_root / 'train' / 'Images' / 'train_2.png'), channels=3)
  assert rgb_volume.image.shape == (1,) + CRAG_HW + (3,)
  np.testing.assert_allclose(rgb_volume.image[0], rgb / 255, atol=1e-6)


def test_to_gray_bt601():
  rgb = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
  np.testing.assert_allclose(crag.to_gray(rgb), [0.299, 0.587, 0.114, 0.5], atol=1e-7)


def test_crag_missing_mask_names_file(crag_root):
  mask = crag_root / 'train' / 'Annotation' / 'train_3.png'
  mask.unlink()
  with pytest.raises(DataError, match='annotation mask missing') as e:
    crag.load_image(str(crag_root / 'train' / 'Images' / 'train_3.png'))
  assert str(e.value).startswith(str(mask))


def test_crag_shape_mismatch_names_file(crag_root):
  mask = crag_root / 'valid' / 'Annotation' / 'test_1.png'
  Image.fromarray(np.zeros((32, 41), np.uint8)).save(mask)
  with pytest.raises(DataError, match=r'mask shape \(32, 41\) differs from image shape') as e:
    crag.load_image(str(crag_root / 'valid' / 'Images' / 'test_1.png'))
  assert str(e.value).startswith(str(mask))


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_crag_corrupt_png_names_file(crag_root, damage):
  path = crag_root / 'train' / 'Images' / 'train_1.png'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2] if damage == 'truncate' else b'not a png')
  with pytest.raises(DataError, match='not a readable PNG') as e:
    crag.load_image(str(path))
  assert str(e.value).startswith(str(path))


def test_crag_split_paper_proportions():
  names = [f'img_{i}' for i in range(213)]
  split = crag.split_images(names, seed=0)
  assert {k: len(v) for k, v in split.items()} == {'train': 171, 'val': 21, 'test': 21}
  assert sorted(sum(split.values(), [])) == sorted(names)
  assert crag.split_images(list(reversed(names)), seed=0) == split
  assert crag.split_images(names, seed=3) != split
  small = crag.split_images([f'img_{i}' for i in range(10)])
  assert {k: len(v) for k, v in small.items()} == {'train': 8, 'val': 1, 'test': 1}


def test_load_crag(crag_root):
  data = crag.load(_config(crag_root, 2, labeled_fraction=0.25))
  assert isinstance(data, SegmentationData) and data.layout == 'crag'
  split = crag.split_images(list(crag.find_images(crag_root)))
  # 10 images pooled: 8 training (25% = 2 labeled), 1 validation, 1 test; one slice each.
  assert len(data.labeled) == 2 and len(data.unlabeled) == 6
  assert [v.name for v in data.labeled.volumes] == split['train'][:2]
  element = data.labeled[1]
  assert element['image'].shape == CRAG_HW and element['image'].dtype == np.float32
  assert 0.0 <= element['image'].min() and element['image'].max() <= 1.0
  assert set(np.unique(element['label'])) <= {0, 1}
  assert data.splits['val'].names == split['val'] and data.splits['test'].names == split['test']
  assert data.splits['test'][0].image.shape == (1,) + CRAG_HW
  data.check(progress=False)
  with pytest.raises(ConfigError, match='num_classes'):
    crag.load(_config(crag_root, 3))


def test_load_data_detects_crag(crag_root):
  histo = datasets.load_data(_config(crag_root, 2, labeled_fraction=0.2))
  assert histo.layout == 'crag' and len(histo.labeled) > 0 and 'test' in histo.splits
