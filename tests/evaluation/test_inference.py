"""Slice-by-slice volume prediction and per-volume evaluation with an oracle network."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxseg.data.volume import Volume
from jaxseg.evaluation import inference


def oracle_logits(images_NSS1):
  """A 'network' that reads the class from the intensity: class = round(3 * x)."""
  labels = np.rint(images_NSS1[..., 0] * 3).astype(int)
  return np.asarray(jax.nn.one_hot(labels, 4)) * 10.0


def _volume(shape, seed=0, spacing=None):
  rng = np.random.default_rng(seed)
  label = np.zeros(shape, np.uint8)
  d, h, w = shape
  label[:, h // 4:h // 2, w // 4:3 * w // 4] = 1
  label[:, h // 2:3 * h // 4, w // 3:w // 2] = 2
  label[1:, 3 * h // 4:h - 2, :w // 3] = 3  # clear of the border, so a 1-row shift stays inside
  label[0, 0, 0] = rng.integers(0, 4)
  return Volume('v', label / 3.0, label, spacing=spacing)


def test_prediction_at_network_size_is_exact():
  volume = _volume((3, 16, 16))
  prediction = inference.predict_volume(oracle_logits, volume.image, 16, batch_size=2)
  np.testing.assert_array_equal(prediction, volume.label)


@pytest.mark.parametrize('shape, patch', [((3, 16, 16), 32), ((2, 20, 12), 40), ((4, 27, 19), 32)])
def test_prediction_returns_to_native_size(shape, patch):
  # Nearest-neighbour zoom there and back (SSL4MIS's order 0) moves a few boundary pixels.
  volume = _volume(shape)
  prediction = inference.predict_volume(oracle_logits, volume.image, patch, batch_size=3)
  assert prediction.shape == shape
  assert np.mean(prediction == volume.label) > 0.95


def slices(logits_fn, patch_size):
  return lambda image: inference.predict_volume(logits_fn, image, patch_size, batch_size=2)


def test_slice_probabilities_sum_to_one_and_agree_with_labels():
  volume = _volume((3, 20, 24), seed=1)
  config = ml_collections.ConfigDict(dict(eval=dict(
      mode='slices', patch_size=16, interp_order=0, batch_size=2)))
  probs = inference.predict(oracle_logits, volume.image, config, probabilities=True)
  labels = inference.predict(oracle_logits, volume.image, config)
  assert probs.shape == (3, 20, 24, 4)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert np.mean(probs.argmax(-1) == labels) > 0.95


def test_evaluate_volumes_perfect_oracle_and_units():
  volumes = [_volume((3, 16, 16), seed=i, spacing=(5.0, 1.5, 1.5)) for i in range(2)]
  per_volume, summary = inference.evaluate_volumes(
      slices(oracle_logits, 16), volumes, num_classes=4, progress=False)
  np.testing.assert_allclose(summary['dice']['mean'], 1.0)
  np.testing.assert_allclose(summary['hd95']['mean'], 0.0)
  assert [v['name'] for v in per_volume] == ['v', 'v']

  def shifted(images):  # predicts every class one row lower: HD = 1 row = 1.5 mm
    return np.roll(oracle_logits(images), 1, axis=1)

  _, in_voxels = inference.evaluate_volumes(slices(shifted, 16), volumes, num_classes=4,
                                            progress=False)
  _, in_mm = inference.evaluate_volumes(slices(shifted, 16), volumes, num_classes=4, units='mm',
                                        progress=False)
  np.testing.assert_allclose(in_voxels['hd95']['mean'], 1.0)
  np.testing.assert_allclose(in_mm['hd95']['mean'], 1.5)


def test_mm_without_spacing_is_refused():
  with pytest.raises(ValueError, match='spacing unknown'):
    inference.evaluate_volumes(slices(oracle_logits, 8), [_volume((2, 8, 8))], num_classes=4,
                               units='mm', progress=False)
