"""Sliding-window 3D prediction: identity networks reproduce their input; UA-MT's loop matches."""

import itertools
import math

import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.errors import ConfigError
from jaxseg.evaluation import inference, sliding_window

SHAPES = [
    ((20, 17, 9), (8, 8, 8), (3, 5, 2)),  # uneven strides, last window moved back
    ((5, 6, 7), (8, 8, 8), (4, 4, 4)),  # smaller than the window on every axis: pad, crop back
    ((8, 30, 3), (8, 8, 4), (8, 7, 1)),  # exact fit, stride > overlap, one short axis
]


def probability_identity(batch):
  """logits whose softmax is (x, 1 - x) for the input voxel x in (0, 1)."""
  x = np.clip(batch[..., 0], 1e-3, 1 - 1e-3)
  return np.stack([np.log(x), np.log1p(-x)], axis=-1)


@pytest.mark.parametrize('shape,window,stride', SHAPES)
def test_probability_identity_reproduces_input(shape, window, stride):
  x = np.random.default_rng(0).uniform(0.01, 0.99, size=shape).astype(np.float32)
  probs = sliding_window.predict_probabilities(probability_identity, x, window, stride,
                                               num_classes=2, batch_size=3)
  assert probs.shape == (*shape, 2) and probs.dtype == np.float32
  np.testing.assert_allclose(probs[..., 0], x, rtol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('shape,window,stride', SHAPES)
def test_label_identity_through_predict(shape, window, stride):
  label = np.random.default_rng(1).integers(0, 3, size=shape).astype(np.uint8)
  config = config_lib.base_config()
  config.num_classes = 3
  config.eval.update(mode='sliding_window', window=window, stride=stride, batch_size=2)
  one_hot = lambda batch: 20.0 * np.eye(3, dtype=np.float32)[np.rint(batch[..., 0]).astype(int)]
  np.testing.assert_array_equal(inference.predict(one_hot, label.astype(np.float32), config),
                                label)


def test_window_starts_match_uamt():
  # LA: a 183-voxel axis, window 112, stride 18 -> ceil(71 / 18) + 1 = 5 windows, last at 71.
  assert sliding_window.window_starts(183, 112, 18) == [0, 18, 36, 54, 71]
  assert sliding_window.window_starts(88, 80, 4) == [0, 4, 8]
  assert sliding_window.window_starts(112, 112, 18) == [0]


def uamt_reference(net, image, window, stride, num_classes):
  """UA-MT's test_single_case, transcribed loop for loop (one window per call)."""
  shape = image.shape
  pads = [max(w - s, 0) for s, w in zip(shape, window)]
  pads = [(p // 2, p - p // 2) for p in pads]
  image = np.pad(image, pads)
  counts = [math.ceil((s - w) / st) + 1 for s, w, st in zip(image.shape, window, stride)]
  score = np.zeros((num_classes, *image.shape), np.float64)
  cnt = np.zeros(image.shape)
  for ix, iy, iz in itertools.product(*map(range, counts)):
    xs, ys, zs = (min(st * i, s - w) for st, i, s, w in
                  zip(stride, (ix, iy, iz), image.shape, window))
    region = (slice(xs, xs + window[0]), slice(ys, ys + window[1]), slice(zs, zs + window[2]))
    logits = net(image[region][None, ..., None])[0]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    score[(slice(None), *region)] += np.moveaxis(e / e.sum(-1, keepdims=True), -1, 0)
    cnt[region] += 1
  score /= cnt
  crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, shape))
  return np.moveaxis(score[(slice(None), *crop)], 0, -1)


def test_matches_uamt_loop_with_position_dependent_network():
  # A network whose output depends on where a voxel sits in the window, so windows disagree and
  # the averaging (and the padding offsets) must be exactly UA-MT's to match.
  window = (6, 5, 4)
  ramp = np.stack(np.meshgrid(*(np.linspace(0, 1, w) for w in window), indexing='ij'), -1)

  def net(batch):
    x = batch[..., :1]
    return np.concatenate([3 * x * ramp[..., :1], x + ramp[..., 1:2], -ramp[..., 2:] * x],
                          axis=-1).astype(np.float32)

  image = np.random.default_rng(2).normal(size=(13, 4, 11)).astype(np.float32)
  got = sliding_window.predict_probabilities(net, image, window, (4, 2, 3), num_classes=3,
                                             batch_size=4)
  np.testing.assert_allclose(got, uamt_reference(net, image, window, (4, 2, 3), 3), rtol=1e-5,
                             atol=1e-6)


def test_every_call_has_the_fixed_batch():
  sizes = []

  def net(batch):
    sizes.append(batch.shape)
    return probability_identity(batch)

  x = np.full((20, 17, 9), 0.5, np.float32)
  sliding_window.predict_probabilities(net, x, (8, 8, 8), (3, 5, 2), num_classes=2, batch_size=4)
  windows = 5 * 3 * 2  # ceil(12/3)+1, ceil(9/5)+1, ceil(1/2)+1
  assert len(sizes) == math.ceil(windows / 4)
  assert set(sizes) == {(4, 8, 8, 8, 1)}


def test_bad_window_and_output_shape():
  x = np.zeros((8, 8, 8), np.float32)
  with pytest.raises(ConfigError, match='eval.window'):
    sliding_window.predict_probabilities(probability_identity, x, (8, 8), (1, 1, 1), 2)
  with pytest.raises(ConfigError, match='eval.stride'):
    sliding_window.predict_probabilities(probability_identity, x, (8, 8, 8), (0, 1, 1), 2)
  with pytest.raises(ValueError, match='logits_fn returned shape'):
    sliding_window.predict_probabilities(probability_identity, x, (8, 8, 8), (4, 4, 4), 3)
