"""Volume prediction slice by slice and per-volume evaluation, as SSL4MIS evaluates ACDC.

Each slice is resized to the network's input size, predicted, and the label map resized back
(nearest neighbour) to the slice's own size, so metrics are computed at native resolution.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tqdm

from jaxseg.data.transforms import resize
from jaxseg.data.volume import Volume
from jaxseg.evaluation import metrics

# images (N, S, S, 1) float32 -> logits (N, S, S, K)
LogitsFn = Callable[[np.ndarray], np.ndarray]


def predict_volume(logits_fn: LogitsFn, image_DHW: np.ndarray, patch_size: int,
                   interp_order: int = 0, batch_size: int = 32) -> np.ndarray:
  """Returns the (D, H, W) label map for a (D, H, W) volume."""
  depth, height, width = image_DHW.shape
  resized = np.stack([resize(s, patch_size, order=interp_order) for s in image_DHW])
  labels = []
  for start in range(0, depth, batch_size):
    chunk = resized[start:start + batch_size]
    # Pad to a fixed batch so one compiled program serves every volume.
    padded = np.zeros((batch_size, patch_size, patch_size, 1), np.float32)
    padded[:len(chunk), ..., 0] = chunk
    labels.append(np.asarray(logits_fn(padded)).argmax(-1)[:len(chunk)])
  labels = np.concatenate(labels)
  return np.stack([resize(s.astype(np.uint8), (height, width), order=0) for s in labels])


def evaluate_volumes(logits_fn: LogitsFn, volumes: Sequence[Volume], *, num_classes: int,
                     patch_size: int, interp_order: int = 0, batch_size: int = 32,
                     units: str = 'voxels', empty: str = 'nan', progress: bool = True):
  """Per-volume, per-class metrics; returns (list of per-volume dicts, summary over volumes)."""
  if units not in ('voxels', 'mm'):
    raise ValueError(f'units must be "voxels" or "mm", got {units!r}')
  per_volume = []
  for volume in tqdm.tqdm(volumes, desc='evaluate', unit='vol', leave=False, disable=not progress):
    prediction = predict_volume(logits_fn, volume.image, patch_size, interp_order, batch_size)
    spacing = volume.spacing if units == 'mm' else None
    if units == 'mm' and spacing is None:
      raise ValueError(f'{volume.path or volume.name}: spacing unknown; evaluate in voxels')
    result = metrics.per_class_metrics(prediction, volume.label, num_classes, spacing=spacing,
                                       empty=empty)
    result['name'] = volume.name
    per_volume.append(result)
  return per_volume, metrics.summarize(per_volume)
