"""Tests for jaxseg.data.synthetic3d: the 3D phantom."""

import numpy as np

from jaxseg.data import synthetic3d


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
