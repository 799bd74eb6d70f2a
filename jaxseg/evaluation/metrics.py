"""Per-volume segmentation metrics (Dice, Jaccard, HD95, ASD) computed as medpy computes them.

The definitions follow `medpy.metric.binary` (used by the SSL4MIS benchmark) without depending
on medpy:

- Surface of a mask: its voxels minus its binary erosion with the connectivity-1 structure
  (`generate_binary_structure(ndim, 1)`); outside the array counts as background, so mask voxels
  on the array border are surface voxels.
- d(A→B): for every surface voxel of A, the Euclidean distance (in `spacing` units) to the
  nearest surface voxel of B, from `distance_transform_edt(~surface_B, sampling=spacing)`.
- hd95: the 95th percentile (linear interpolation) of d(pred→gt) and d(gt→pred) pooled into one
  array, which is what medpy's `hd95` does (`percentile(hstack((hd1, hd2)), 95)`). It is not the
  larger of the two directed percentiles; the two differ when one surface is much smaller.
- asd: the mean of d(pred→gt) only. medpy's `asd` is directed (pred to gt), unlike its `assd`;
  SSL4MIS reports `asd`, so that is what is reproduced here.
- spacing None means voxel units; SSL4MIS's ACDC numbers are computed that way.

Empty masks (medpy raises on them, so every benchmark picks its own rule):

- Both empty: dice 1, jaccard 1, hd95 0, asd 0. Predicting 'absent' for an absent structure is
  correct. (SSL4MIS's `val_2D.py` returns dice 0 here; it does not arise on its test sets.)
- Prediction empty, ground truth not: dice 0, jaccard 0. The distances are undefined, and
  `empty` selects what is returned for them:
    'nan' (default): NaN, so `summarize` leaves them out of means and reports how many there
      were.
    'ssl4mis': 0 for both, as SSL4MIS's `val_2D.py` does. This rewards missing a structure
      entirely with a perfect distance, which is why it is not the default.
- Ground truth empty, prediction not: dice 0, jaccard 0, and NaN distances in both modes
  (SSL4MIS would call medpy here, which raises).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES = ('dice', 'jaccard', 'hd95', 'asd')
EMPTY_MODES = ('nan', 'ssl4mis')
UNITS = ('voxels', 'mm')


def _sampling(spacing: Sequence[float] | float | None, ndim: int) -> np.ndarray | None:
  """Voxel size per axis as float64, or None for voxel units."""
  if spacing is None:
    return None
  sampling = np.asarray(spacing, dtype=np.float64)
  if sampling.ndim == 0:
    sampling = np.full(ndim, float(sampling))
  if sampling.shape != (ndim,):
    raise ValueError(f'spacing has {sampling.size} values for {ndim}-D masks')
  if not np.all(np.isfinite(sampling)) or np.any(sampling <= 0):
    raise ValueError(f'spacing must be positive and finite, got {tuple(sampling)}')
  return sampling


def _surface(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
  """Voxels of `mask` that the connectivity-1 erosion removes (medpy's border)."""
  return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
  """Bounding box of a non-empty mask.

  Cropping both masks to the box of their union changes no result: a mask voxel's neighbours
  outside the box are background, as the array border counts as background, so surfaces are
  the same; and the exact EDT only depends on where the surface voxels are, all inside. It
  makes the EDTs cost the size of the structure instead of the whole volume.
  """
  return ndimage.find_objects(mask.astype(np.int8))[0]


def surface_distances(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Directed surface distances d(pred→gt) and d(gt→pred) of two non-empty boolean masks.

  Args:
    pred: predicted mask, any dimension; nonzero is foreground.
    gt: ground-truth mask, same shape.
    spacing: voxel size per axis (or one value for all axes), None for voxel units.

  Returns:
    (d_pred_gt, d_gt_pred): float64 arrays with one distance per surface voxel of pred and of
    gt respectively.
  """
  pred, gt = _as_masks(pred, gt)
  if not pred.any() or not gt.any():
    raise ValueError('surface distances need two non-empty masks')
  sampling = _sampling(spacing, pred.ndim)
  box = _bounding_box(pred | gt)
  pred, gt = pred[box], gt[box]
  structure = ndimage.generate_binary_structure(pred.ndim, 1)
  pred_surface = _surface(pred, structure)
  gt_surface = _surface(gt, structure)
  d_pred_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sampling)[pred_surface]
  d_gt_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[gt_surface]
  return d_pred_gt, d_gt_pred


def _as_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both arrays as boolean masks of the same shape, at least 1-D."""
  pred = np.atleast_1d(np.asarray(pred).astype(bool))
  gt = np.atleast_1d(np.asarray(gt).astype(bool))
  if pred.shape != gt.shape:
    raise ValueError(f'prediction shape {pred.shape} differs from ground truth {gt.shape}')
  return pred, gt


def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | float | None = None,
    empty: str = 'nan',
) -> dict[str, float]:
  """Dice, Jaccard, HD95 and ASD of one binary prediction against its ground truth.

  Args:
    pred: predicted mask, 2-D or 3-D (any dimension works); nonzero is foreground.
    gt: ground-truth mask, same shape.
    spacing: voxel size per axis in mm (or one value for all axes); None gives voxel units.
    empty: 'nan' or 'ssl4mis', the rule for an empty prediction with a non-empty ground truth
      (see the module docstring).

  Returns:
    {'dice', 'jaccard', 'hd95', 'asd'} as Python floats; hd95 and asd may be NaN.
  """
  if empty not in EMPTY_MODES:
    raise ValueError(f'empty must be one of {EMPTY_MODES}, got {empty!r}')
  pred, gt = _as_masks(pred, gt)
  sampling = _sampling(spacing, pred.ndim)
  pred_size = int(np.count_nonzero(pred))
  gt_size = int(np.count_nonzero(gt))
  if pred_size == 0 and gt_size == 0:
    return {'dice': 1.0, 'jaccard': 1.0, 'hd95': 0.0, 'asd': 0.0}
  intersection = int(np.count_nonzero(pred & gt))
  dice = 2.0 * intersection / (pred_size + gt_size)
  jaccard = intersection / (pred_size + gt_size - intersection)
  if pred_size == 0 or gt_size == 0:
    distance = 0.0 if (pred_size == 0 and empty == 'ssl4mis') else float('nan')
    return {'dice': dice, 'jaccard': jaccard, 'hd95': distance, 'asd': distance}
  d_pred_gt, d_gt_pred = surface_distances(pred, gt, sampling)
  hd95 = float(np.percentile(np.concatenate([d_pred_gt, d_gt_pred]), 95))
  return {'dice': dice, 'jaccard': jaccard, 'hd95': hd95, 'asd': float(d_pred_gt.mean())}


def per_class_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | float | None = None,
    empty: str = 'nan',
) -> dict[str, np.ndarray]:
  """`binary_metrics` of every foreground class of a label map, as SSL4MIS evaluates a volume.

  Args:
    pred_labels: predicted class indices, any dimension.
    gt_labels: ground-truth class indices, same shape.
    num_classes: number of classes including background 0.
    spacing: voxel size per axis in mm, None for voxel units.
    empty: empty-mask rule, 'nan' or 'ssl4mis'.

  Returns:
    Metric name -> float64 array of shape (num_classes - 1,), entry i for class i + 1.
  """
  pred_labels = np.asarray(pred_labels)
  gt_labels = np.asarray(gt_labels)
  if num_classes < 2:
    raise ValueError(f'num_classes must be at least 2 (background + one class), got {num_classes}')
  for name, labels in (('prediction', pred_labels), ('ground truth', gt_labels)):
    # A label outside [0, num_classes) would silently drop out of every class's mask.
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(
          f'{name} has labels in [{labels.min()}, {labels.max()}], expected [0, {num_classes})')
  result = {name: np.empty(num_classes - 1, dtype=np.float64) for name in METRIC_NAMES}
  for c in range(1, num_classes):
    values = binary_metrics(pred_labels == c, gt_labels == c, spacing=spacing, empty=empty)
    for name in METRIC_NAMES:
      result[name][c - 1] = values[name]
  return result


def summarize(per_volume: list[dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
  """Mean and std over volumes of each metric and class, leaving NaN (undefined) values out.

  SSL4MIS averages the per-volume, per-class values over the test volumes; this does the same,
  but a NaN distance is excluded instead of counted as a number.

  Args:
    per_volume: one `per_class_metrics` result per volume.

  Returns:
    Metric name -> {'mean', 'std', 'count', 'total'}, each of shape (num_classes - 1,): mean and
    population std (ddof 0, as np.nanstd) of the defined values, NaN where none is defined;
    count of defined values; total number of volumes.
  """
  if not per_volume:
    raise ValueError('summarize needs at least one volume')
  names = [n for n in METRIC_NAMES if n in per_volume[0]]
  summary = {}
  for name in names:
    try:
      stacked = np.stack([np.asarray(v[name], dtype=np.float64) for v in per_volume])
    except KeyError as e:
      raise ValueError(f'a volume has no {e.args[0]!r} metric') from None
    except ValueError as e:
      raise ValueError(f'volumes disagree on the number of classes for {name!r}: {e}') from None
    # Masked sums instead of np.nanmean, which warns on classes with no defined value.
    defined = ~np.isnan(stacked)
    count = defined.sum(axis=0)
    safe_count = np.maximum(count, 1)
    mean = np.where(defined, stacked, 0.0).sum(axis=0) / safe_count
    var = np.where(defined, (stacked - mean) ** 2, 0.0).sum(axis=0) / safe_count
    undefined = count == 0
    summary[name] = {
        'mean': np.where(undefined, np.nan, mean),
        'std': np.where(undefined, np.nan, np.sqrt(var)),
        'count': count,
        'total': np.full(count.shape, len(per_volume)),
    }
  return summary


def flat_scalars(summary, class_names: Sequence[str]) -> dict[str, float]:
  """`{'dice/RV': ..., 'dice/mean': ...}` for logging; means over volumes, then over classes."""
  scalars = {}
  for metric, stats in summary.items():
    for name, value in zip(class_names, stats['mean']):
      scalars[f'{metric}/{name}'] = float(value)
    defined = stats['mean'][~np.isnan(stats['mean'])]
    scalars[f'{metric}/mean'] = float(defined.mean()) if defined.size else float('nan')
  return scalars


def format_table(
    summary: dict[str, dict[str, np.ndarray]],
    class_names: Sequence[str],
    units: str = 'voxels',
) -> str:
  """Markdown table of a `summarize` result: one row per class and a 'mean' row.

  Cells are `mean ± std` over volumes. The 'mean' row is the mean over classes of the per-class
  means and has no std, since a spread of class means is not a spread over volumes. When some
  volumes had an undefined (NaN) distance, a note below the table says how many per class.

  Args:
    summary: output of `summarize`, with the four metrics.
    class_names: one name per foreground class, in class order.
    units: 'voxels' or 'mm', the unit of HD95 and ASD, printed in the header.

  Returns:
    The table as a string (no trailing newline).
  """
  if units not in UNITS:
    raise ValueError(f'units must be one of {UNITS}, got {units!r}')
  missing = [name for name in METRIC_NAMES if name not in summary]
  if missing:
    raise ValueError(f'summary lacks metrics {missing}')
  num = len(summary['dice']['mean'])
  if len(class_names) != num:
    raise ValueError(f'{len(class_names)} class names for {num} classes')
  digits = {'dice': 4, 'jaccard': 4, 'hd95': 2, 'asd': 2}
  total = int(summary['dice']['total'][0])
  lines = [
      f'Metrics over {total} volumes (HD95 and ASD in {units})',
      '',
      f'| Class | Dice | Jaccard | HD95 ({units}) | ASD ({units}) |',
      '|---|---:|---:|---:|---:|',
  ]
  for i, class_name in enumerate(class_names):
    cells = [
        f"{summary[m]['mean'][i]:.{digits[m]}f} ± {summary[m]['std'][i]:.{digits[m]}f}"
        for m in METRIC_NAMES
    ]
    lines.append(f"| {class_name} | {' | '.join(cells)} |")
  # Plain mean: a class with no defined value makes the overall mean NaN rather than hiding it.
  cells = [f"{np.mean(summary[m]['mean']):.{digits[m]}f}" for m in METRIC_NAMES]
  lines.append(f"| mean | {' | '.join(cells)} |")
  undefined = np.maximum(
      summary['hd95']['total'] - summary['hd95']['count'],
      summary['asd']['total'] - summary['asd']['count'])
  if undefined.any():
    parts = [
        f'{class_name} in {int(n)} of {total} volumes'
        for class_name, n in zip(class_names, undefined) if n
    ]
    lines.append('')
    lines.append(
        'HD95/ASD undefined (exactly one of prediction and ground truth empty), left out of '
        f"mean ± std: {'; '.join(parts)}.")
  return '\n'.join(lines)
