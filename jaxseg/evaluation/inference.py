"""Volume prediction slice by slice and per-volume evaluation, as SSL4MIS evaluates ACDC.

Each slice is resized to the network's input size, predicted, and the label map resized back
(nearest neighbour) to the slice's own size, so metrics are computed at native resolution.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import numpy as np
import tqdm

from jaxseg.data.transforms import resize
from jaxseg.data.volume import Volume
from jaxseg.evaluation import metrics, sliding_window

# images (N, S, S, 1) float32 -> logits (N, S, S, K)
LogitsFn = Callable[[np.ndarray], np.ndarray]


def _slice_logits(logits_fn: LogitsFn, image_DHW: np.ndarray | Sequence[np.ndarray],
                  patch_size: int, interp_order: int, batch_size: int) -> np.ndarray:
  """(D, S, S, K) logits of every slice (a volume, or a list of 2D images of any sizes) resized to
  the network's input size."""
  resized = np.stack([resize(s, patch_size, order=interp_order) for s in image_DHW])
  logits = []
  for start in range(0, len(resized), batch_size):
    chunk = resized[start:start + batch_size]
    # Pad to a fixed batch so one compiled program serves every volume.
    padded = np.zeros((batch_size, patch_size, patch_size, 1), np.float32)
    padded[:len(chunk), ..., 0] = chunk
    logits.append(np.asarray(logits_fn(padded))[:len(chunk)])
  return np.concatenate(logits)


def predict_volume(logits_fn: LogitsFn, image_DHW: np.ndarray, patch_size: int,
                   interp_order: int = 0, batch_size: int = 32) -> np.ndarray:
  """Returns the (D, H, W) label map for a (D, H, W) volume, predicted slice by slice."""
  _, height, width = image_DHW.shape
  labels = _slice_logits(logits_fn, image_DHW, patch_size, interp_order, batch_size).argmax(-1)
  return np.stack([resize(s.astype(np.uint8), (height, width), order=0) for s in labels])


def predict_slices(logits_fn: LogitsFn, images: Iterable[np.ndarray], patch_size: int,
                   interp_order: int = 0, batch_size: int = 32) -> list[np.ndarray]:
  """Label maps of 2D images of any sizes, batched: each resized to the network's input, predicted,
  and the labels resized back (nearest neighbour). E.g. pseudo-labels for unlabeled slices."""
  labels, pending = [], []

  def flush():
    predicted = _slice_logits(logits_fn, pending, patch_size, interp_order, batch_size).argmax(-1)
    labels.extend(resize(label.astype(np.uint8), image.shape, order=0)
                  for label, image in zip(predicted, pending))
    pending.clear()

  for image in images:
    pending.append(np.asarray(image, np.float32))
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  return labels


def predict_slice_probabilities(logits_fn: LogitsFn, image_DHW: np.ndarray, patch_size: int,
                                interp_order: int = 0, batch_size: int = 32) -> np.ndarray:
  """(D, H, W, K) softmax probabilities, resized back to each slice's size bilinearly."""
  _, height, width = image_DHW.shape
  logits = _slice_logits(logits_fn, image_DHW, patch_size, interp_order, batch_size)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.stack([np.stack([resize(p[..., k], (height, width), order=1)
                             for k in range(p.shape[-1])], axis=-1) for p in probs])


def predict(logits_fn: LogitsFn, image_DHW: np.ndarray, config, *,
            probabilities: bool = False) -> np.ndarray:
  """What a run's evaluation predicts for one volume: the (D, H, W) label map, or with
  `probabilities` the (D, H, W, K) class probabilities. `config.eval.mode` chooses how:
  'slices' (2D networks, slice by slice) or 'sliding_window' (3D networks)."""
  e = config.eval
  mode = e.get('mode', 'slices')
  if mode == 'slices':
    if probabilities:
      return predict_slice_probabilities(logits_fn, image_DHW, e.patch_size, e.interp_order,
                                         e.batch_size)
    return predict_volume(logits_fn, image_DHW, e.patch_size, e.interp_order, e.batch_size)
  if mode == 'sliding_window':
    probs = sliding_window.predict_probabilities(
        logits_fn, image_DHW, window=tuple(e.window), stride=tuple(e.stride),
        num_classes=config.num_classes, batch_size=e.batch_size)
    return probs if probabilities else probs.argmax(-1).astype(np.uint8)
  raise ValueError(f'eval.mode: unknown {mode!r}; known: slices, sliding_window')


def evaluate_volumes(predict_fn: Callable[[np.ndarray], np.ndarray], volumes: Sequence[Volume], *,
                     num_classes: int, units: str = 'voxels', empty: str = 'nan',
                     progress: bool = True):
  """Per-volume, per-class metrics of `predict_fn(image_DHW) -> labels_DHW` (e.g. `predict`
  bound to a run's config); returns (list of per-volume dicts, summary over volumes)."""
  if units not in ('voxels', 'mm'):
    raise ValueError(f'units must be "voxels" or "mm", got {units!r}')
  per_volume = []
  for volume in tqdm.tqdm(volumes, desc='evaluate', unit='vol', leave=False, disable=not progress):
    prediction = predict_fn(volume.image)
    spacing = volume.spacing if units == 'mm' else None
    if units == 'mm' and spacing is None:
      raise ValueError(f'{volume.path or volume.name}: spacing unknown; evaluate in voxels')
    result = metrics.per_class_metrics(prediction, volume.label, num_classes, spacing=spacing,
                                       empty=empty)
    result['name'] = volume.name
    per_volume.append(result)
  return per_volume, metrics.summarize(per_volume)


def make_logits_fn(model):
  """Evaluation forward pass: running batch statistics, no dropout."""
  apply = jax.jit(lambda variables, x: model.apply(variables, x, train=False)['logits'])
  return lambda state: (lambda x: apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, x))


def evaluate_split(logits_fn, volumes, config, progress: bool = True):
  return evaluate_volumes(
      lambda image: predict(logits_fn, image, config), volumes,
      num_classes=config.num_classes, units=config.eval.units, empty=config.eval.empty,
      progress=progress)
