"""Sliding-window prediction of a 3D volume, as UA-MT's `test_single_case` (and MCF's) does it.

A volume smaller than the window along an axis is zero-padded symmetrically to the window
(left pad = total // 2), predicted, and the result cropped back. Windows start every `stride`
voxels along each axis, the last one moved back to end at the border
(`min(stride * i, size - window)` for i < ceil((size - window) / stride) + 1), so every voxel is
covered; overlapping softmax maps are averaged. Windows go to the network in batches of a
fixed size (the last batch padded with empty windows), so one compiled program serves every
volume of a given window.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np

from jaxseg.errors import ConfigError

# windows (N, wd, wh, ww, 1) float32 -> logits (N, wd, wh, ww, K)
LogitsFn = Callable[[np.ndarray], np.ndarray]


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Start offsets along one axis of length `size` >= `window` (UA-MT's rule, see module doc)."""
  count = math.ceil((size - window) / stride) + 1
  return [min(stride * i, size - window) for i in range(count)]


def _check(name: str, values: Sequence[int]) -> tuple[int, int, int]:
  values = tuple(int(v) for v in values)
  if len(values) != 3 or min(values) < 1:
    raise ConfigError(f'eval.{name}: expected three positive sizes (D, H, W), got {values}')
  return values


def _softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def predict_probabilities(logits_fn: LogitsFn, image_DHW: np.ndarray, window: Sequence[int],
                          stride: Sequence[int], num_classes: int,
                          batch_size: int = 4) -> np.ndarray:
  """(D, H, W, K) float32 class probabilities of a (D, H, W) volume, averaged over windows.

  Args:
    logits_fn: the network, (N, *window, 1) float32 -> (N, *window, K) logits; N is always
      `batch_size`.
    image_DHW: the volume.
    window: (wd, wh, ww) network input size.
    stride: (sd, sh, sw) step between window starts.
    num_classes: K; the network's output channels must match.
    batch_size: windows per network call.
  """
  window, stride = _check('window', window), _check('stride', stride)
  if batch_size < 1:
    raise ConfigError(f'eval.batch_size: must be >= 1, got {batch_size}')
  image = np.asarray(image_DHW, dtype=np.float32)
  if image.ndim != 3:
    raise ValueError(f'sliding window expects a 3D (D, H, W) volume, got shape {image.shape}')
  shape = image.shape
  pads = [(max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2) for s, w in zip(shape, window)]
  image = np.pad(image, pads, mode='constant', constant_values=0)
  corners = list(itertools.product(
      *(window_starts(s, w, st) for s, w, st in zip(image.shape, window, stride))))

  score = np.zeros((*image.shape, num_classes), np.float32)
  count = np.zeros(image.shape, np.float32)
  for start in range(0, len(corners), batch_size):
    chunk = corners[start:start + batch_size]
    batch = np.zeros((batch_size, *window, 1), np.float32)
    for i, (d, h, w) in enumerate(chunk):
      batch[i, ..., 0] = image[d:d + window[0], h:h + window[1], w:w + window[2]]
    logits = np.asarray(logits_fn(batch), dtype=np.float32)
    if logits.shape != (batch_size, *window, num_classes):
      raise ValueError(f'logits_fn returned shape {logits.shape}, expected '
                       f'{(batch_size, *window, num_classes)}')
    probs = _softmax(logits)
    for i, (d, h, w) in enumerate(chunk):
      region = (slice(d, d + window[0]), slice(h, h + window[1]), slice(w, w + window[2]))
      score[region] += probs[i]
      count[region] += 1.0
  score /= count[..., None]
  crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, shape))
  return np.ascontiguousarray(score[crop])
