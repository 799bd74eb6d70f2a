"""Tests for jaxseg.data.transforms3d: UA-MT's crop and rotation, the two 3D views."""

import numpy as np
import pytest

from jaxseg.data import transforms3d
from jaxseg.errors import ConfigError


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
