"""The streams' views for contrastive methods: intensity twins, independent views, pseudo-labels."""

import numpy as np
import pytest

from conftest import tiny_config
from jaxseg.data import datasets, pipeline, transforms
from jaxseg.data.sources import PseudoLabeledSource
from jaxseg.errors import ConfigError
from jaxseg.evaluation import inference


def _slice(seed=0, size=24):
  rng = np.random.default_rng(seed)
  label = np.zeros((size, size), np.uint8)
  label[4:12, 6:18] = 1
  label[14:20, 3:9] = 2
  image = (label / 2.0 + 0.05 * rng.standard_normal((size, size))).clip(0, 1).astype(np.float32)
  return image, label


def test_labeled_twin_shares_geometry_and_label():
  image, label = _slice()
  weak = transforms.WeakAugment(24, rotate_degrees=20.0)
  twin = transforms.LabeledTwin(weak, strong_ops=('brightness', 'contrast', 'gamma'))
  for seed in range(5):
    out = twin.random_map({'image': image, 'label': label}, np.random.default_rng(seed))
    # The same seed through the weak augmentation alone gives the first view and its label.
    first, first_label = weak.augment(image, label, np.random.default_rng(seed))
    np.testing.assert_array_equal(out['image'], first)
    np.testing.assert_array_equal(out['label'], first_label)
    # Intensity ops are monotone per pixel: the twin keeps the ordering of every pixel pair
    # inside one class region, i.e. no pixel moved.
    assert out['image_twin'].shape == out['image'].shape
    order = np.argsort(out['image'].ravel(), kind='stable')
    twin_sorted = out['image_twin'].ravel()[order]
    assert np.all(np.diff(twin_sorted) >= -1e-6)
  with pytest.raises(ConfigError, match='cutout'):
    transforms.LabeledTwin(weak, strong_ops=('cutout',))


def test_independent_views_differ_in_geometry_shared_do_not():
  image, _ = _slice()
  # A continuous random angle every time: two independent draws never coincide.
  weak = transforms.WeakAugment(24, rotate_degrees=20.0, p_rot_flip=0.0, p_rotate=1.0)
  shared = transforms.TwoViews(24, weak=weak, strong_ops=())
  independent = transforms.TwoViews(24, weak=weak, strong_ops=(), independent=True)
  differ = 0
  for seed in range(8):
    out = shared.random_map({'image': image}, np.random.default_rng(seed))
    np.testing.assert_array_equal(out['image_weak'], out['image_strong'])
    out = independent.random_map({'image': image}, np.random.default_rng(seed))
    differ += not np.array_equal(out['image_weak'], out['image_strong'])
  assert differ == 8
  with pytest.raises(ConfigError, match='share their geometry'):
    transforms.TwoViews(24, weak=weak, keep_label=True, independent=True)


def test_pseudo_labeled_source_and_streams():
  config = tiny_config('acdc_supervised')
  data = datasets.load_data(config)
  labels = [np.full(data.unlabeled[i]['image'].shape, i % 3, np.uint8)
            for i in range(len(data.unlabeled))]
  source = PseudoLabeledSource(data.unlabeled, labels)
  assert source[4]['label'][0, 0] == 1 and set(source[4]) == {'image', 'label'}
  with pytest.raises(ValueError, match='pseudo-labels for'):
    PseudoLabeledSource(data.unlabeled, labels[:-1])

  import dataclasses
  with config.unlocked():
    config.data.labeled_views = 'twin'
  iterator = pipeline.make_train_iterator(dataclasses.replace(data, unlabeled=source), config,
                                          with_unlabeled=True)
  labeled, unlabeled = next(iterator)
  assert set(labeled) == {'image', 'image_twin', 'label'}
  assert set(unlabeled) == {'image_weak', 'image_strong', 'label'}
  # A run of unlabeled-only terms (global contrast) builds no labeled stream; 'all' reads every
  # training image.
  with config.unlocked():
    config.data.unlabeled_source = 'all'
  iterator = pipeline.make_train_iterator(data, config, with_unlabeled=True, with_labeled=False)
  labeled, unlabeled = next(iterator)
  assert labeled is None and set(unlabeled) == {'image_weak', 'image_strong'}
  assert iterator.get_state().keys() == {'unlabeled'}
  assert len(pipeline.ConcatSource([data.labeled, data.unlabeled])) == (
      len(data.labeled) + len(data.unlabeled))
  with config.unlocked():
    config.data.unlabeled_source = 'everything'
  with pytest.raises(ConfigError, match='data.unlabeled_source'):
    pipeline.make_train_iterator(data, config, with_unlabeled=True)


def test_predict_slices_returns_native_sizes_in_batches():
  calls = []

  def oracle(images_NSS1):  # class = round(2 * intensity)
    calls.append(images_NSS1.shape)
    return np.eye(3)[np.rint(images_NSS1[..., 0] * 2).astype(int)] * 10.0

  images = [_slice(seed, size)[1] / 2.0 for seed, size in enumerate((24, 24, 20, 28, 24))]
  labels = inference.predict_slices(oracle, iter(images), patch_size=24, batch_size=2)
  assert [l.shape for l in labels] == [i.shape for i in images]
  np.testing.assert_array_equal(labels[0], np.rint(images[0] * 2))
  assert all(shape == (2, 24, 24, 1) for shape in calls) and len(calls) == 3
