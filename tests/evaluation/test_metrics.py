"""Tests of the medpy-compatible segmentation metrics, on masks whose answers are known."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from jaxseg.evaluation import metrics


def _rect(shape: tuple[int, ...], *ranges: tuple[int, int]) -> np.ndarray:
  """Boolean array with the box given by one (start, stop) per axis set."""
  mask = np.zeros(shape, dtype=bool)
  mask[tuple(slice(a, b) for a, b in ranges)] = True
  return mask


def _ball(shape: tuple[int, ...], center: tuple[float, ...], radius: float) -> np.ndarray:
  grids = np.meshgrid(*[np.arange(n) for n in shape], indexing='ij')
  return sum((g - c) ** 2 for g, c in zip(grids, center)) <= radius ** 2


def _reference_metrics(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
  """The medpy definitions written independently: neighbour test for surfaces, KD-tree search."""
  spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)

  def surface_points(mask):
    # A voxel is on the surface when one of its 2*ndim face neighbours is background; the
    # zero padding makes outside-the-array background, as binary_erosion's border_value=0.
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis in range(mask.ndim):
      interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    return np.argwhere(mask & ~interior[core]) * spacing

  p, g = surface_points(pred), surface_points(gt)
  d_pg = cKDTree(g).query(p)[0]
  d_gp = cKDTree(p).query(g)[0]
  inter = np.count_nonzero(pred & gt)
  return {
      'dice': 2 * inter / (pred.sum() + gt.sum()),
      'jaccard': inter / np.count_nonzero(pred | gt),
      'hd95': np.percentile(np.concatenate([d_pg, d_gp]), 95),
      'asd': d_pg.mean(),
  }


def _assert_metrics(got: dict[str, float], want: dict[str, float], **tol) -> None:
  assert set(got) == {'dice', 'jaccard', 'hd95', 'asd'}
  for name in want:
    np.testing.assert_allclose(got[name], want[name], err_msg=name, **tol)


def test_dice_jaccard_of_overlapping_rectangles():
  pred = _rect((10, 10), (0, 4), (0, 5))  # 20 voxels
  gt = _rect((10, 10), (2, 6), (3, 8))  # 20 voxels
  # Overlap: rows 2-3 x cols 3-4 = 4 voxels; union 36.
  got = metrics.binary_metrics(pred, gt)
  _assert_metrics(got, {'dice': 8 / 40, 'jaccard': 4 / 36}, rtol=1e-12)


def test_dice_jaccard_of_unequal_sizes_and_int_inputs():
  pred = _rect((8, 8), (0, 2), (0, 8)).astype(np.uint8) * 3  # 16 voxels, nonzero = object
  gt = _rect((8, 8), (0, 1), (0, 8)).astype(np.int32)  # 8 voxels, inside pred
  got = metrics.binary_metrics(pred, gt)
  _assert_metrics(got, {'dice': 16 / 24, 'jaccard': 8 / 16}, rtol=1e-12)


@pytest.mark.parametrize('spacing', [None, (0.7, 1.3, 2.0)])
def test_identical_masks(spacing):
  mask = _ball((20, 24, 18), (9.5, 11.0, 8.2), 6.3)
  mask[2:5, 3:6, 0:4] = True  # a second component touching the array border
  got = metrics.binary_metrics(mask, mask.copy(), spacing=spacing)
  _assert_metrics(got, {'dice': 1.0, 'jaccard': 1.0, 'hd95': 0.0, 'asd': 0.0}, atol=0)


@pytest.mark.parametrize('k', [1, 3, 6])
@pytest.mark.parametrize('spacing, unit', [(None, 1.0), ((2.5, 0.8, 1.1), 2.5)])
def test_parallel_planes_every_distance_is_k(k, spacing, unit):
  # A one-voxel-thick patch erodes to nothing, so all its voxels are surface, and the nearest
  # voxel of the parallel patch is the one straight across: any in-plane offset adds to the
  # distance. So every distance in both directions is k voxels, k * spacing[0] in mm.
  pred = _rect((12, 9, 10), (2, 3), (1, 8), (2, 9))
  gt = np.roll(pred, k, axis=0)
  got = metrics.binary_metrics(pred, gt, spacing=spacing)
  _assert_metrics(
      got, {'dice': 0.0, 'jaccard': 0.0, 'hd95': k * unit, 'asd': k * unit}, rtol=1e-12)


def test_shifted_planes_along_an_in_plane_spacing_axis():
  # Planes normal to the last axis, shifted along it; only spacing[2] matters.
  pred = _rect((6, 7, 15), (1, 5), (0, 7), (3, 4))
  gt = np.roll(pred, 4, axis=2)
  got = metrics.binary_metrics(pred, gt, spacing=(3.0, 2.0, 0.5))
  _assert_metrics(got, {'hd95': 2.0, 'asd': 2.0}, rtol=1e-12)


def test_hd95_pools_both_directions_and_asd_is_directed():
  # gt: a 100-voxel line, all surface; pred: its first voxel.
  # d(pred->gt) = [0]; d(gt->pred) = [0, 1, ..., 99].
  gt = _rect((3, 120), (1, 2), (10, 110))
  pred = _rect((3, 120), (1, 2), (10, 11))
  # medpy pools the 101 distances [0, 0, 1, ..., 99]: percentile 95 sits at sorted index
  # 0.95 * 100 = 95, value 94. The larger of the directed percentiles would be 94.05.
  got = metrics.binary_metrics(pred, gt)
  _assert_metrics(got, {'dice': 2 / 101, 'jaccard': 1 / 100, 'hd95': 94.0, 'asd': 0.0},
                  rtol=1e-12, atol=1e-12)
  swapped = metrics.binary_metrics(gt, pred)
  _assert_metrics(swapped, {'hd95': 94.0, 'asd': 49.5}, rtol=1e-12)


def test_concentric_discs():
  inner = _ball((90, 90), (45, 45), 20)
  outer = _ball((90, 90), (45, 45), 32)
  got = metrics.binary_metrics(inner, outer)
  # Surface voxels lie within one voxel inside their circle, so distances are 12 +- 1.
  assert abs(got['hd95'] - 12) <= 1
  assert abs(got['asd'] - 12) <= 1
  np.testing.assert_allclose(got['dice'], 2 * inner.sum() / (inner.sum() + outer.sum()))


def test_concentric_spheres_with_spacing():
  inner = _ball((40, 40, 40), (20, 20, 20), 8)
  outer = _ball((40, 40, 40), (20, 20, 20), 14)
  got = metrics.binary_metrics(inner, outer, spacing=(2.0, 2.0, 2.0))
  assert abs(got['hd95'] - 12) <= 2
  assert abs(got['asd'] - 12) <= 2
  voxels = metrics.binary_metrics(inner, outer, spacing=None)
  np.testing.assert_allclose(got['hd95'], 2 * voxels['hd95'], rtol=1e-12)
  np.testing.assert_allclose(got['asd'], 2 * voxels['asd'], rtol=1e-12)


@pytest.mark.parametrize('shape, spacing', [
    ((40, 37), None),
    ((40, 37), (1.5, 0.6)),
    ((9, 30, 26), (10.0, 1.2, 1.2)),
    ((16, 16, 12), None),
])
def test_matches_independent_reference(shape, spacing):
  rng = np.random.default_rng(sum(shape))
  # Smoothed noise gives irregular blobs, several components, some touching the border.
  field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
  pred = field > 0.02
  gt = ndimage.shift(field, [1.3] + [0.0] * (len(shape) - 1), order=1) > -0.01
  got = metrics.binary_metrics(pred, gt, spacing=spacing)
  _assert_metrics(got, _reference_metrics(pred, gt, spacing), rtol=1e-10, atol=1e-12)


def test_surface_distances_directions():
  gt = _rect((3, 120), (1, 2), (10, 110))
  pred = _rect((3, 120), (1, 2), (10, 11))
  d_pg, d_gp = metrics.surface_distances(pred, gt)
  np.testing.assert_allclose(d_pg, [0.0])
  np.testing.assert_allclose(np.sort(d_gp), np.arange(100.0))


@pytest.mark.parametrize('empty', ['nan', 'ssl4mis'])
def test_both_empty(empty):
  zeros = np.zeros((5, 6, 7), dtype=bool)
  got = metrics.binary_metrics(zeros, zeros, empty=empty)
  _assert_metrics(got, {'dice': 1.0, 'jaccard': 1.0, 'hd95': 0.0, 'asd': 0.0}, atol=0)


@pytest.mark.parametrize('empty, distance', [('nan', math.nan), ('ssl4mis', 0.0)])
def test_prediction_empty(empty, distance):
  gt = _rect((8, 8), (2, 5), (2, 5))
  got = metrics.binary_metrics(np.zeros_like(gt), gt, empty=empty)
  _assert_metrics(got, {'dice': 0.0, 'jaccard': 0.0, 'hd95': distance, 'asd': distance}, atol=0)


@pytest.mark.parametrize('empty', ['nan', 'ssl4mis'])
def test_ground_truth_empty(empty):
  pred = _rect((8, 8), (2, 5), (2, 5))
  got = metrics.binary_metrics(pred, np.zeros_like(pred), empty=empty)
  _assert_metrics(got, {'dice': 0.0, 'jaccard': 0.0, 'hd95': math.nan, 'asd': math.nan}, atol=0)


def test_bad_arguments():
  mask = _rect((8, 8), (2, 5), (2, 5))
  with pytest.raises(ValueError, match='empty'):
    metrics.binary_metrics(mask, mask, empty='zero')
  with pytest.raises(ValueError, match='shape'):
    metrics.binary_metrics(mask, mask[:, :7])
  with pytest.raises(ValueError, match='spacing'):
    metrics.binary_metrics(mask, mask, spacing=(1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match='spacing'):
    metrics.binary_metrics(mask, mask, spacing=(1.0, 0.0))


def test_per_class_metrics():
  gt = np.zeros((6, 8), dtype=np.int64)
  gt[0:2, 0:4] = 1  # 8 voxels
  gt[3:6, 4:8] = 2  # 12 voxels
  pred = np.zeros_like(gt)
  pred[0:2, 0:3] = 1  # 6 voxels, all inside class 1
  # Class 2 is missing from the prediction; class 3 is absent from both.
  got = metrics.per_class_metrics(pred, gt, num_classes=4)
  assert set(got) == {'dice', 'jaccard', 'hd95', 'asd'}
  for values in got.values():
    assert values.shape == (3,)
  want_class1 = metrics.binary_metrics(pred == 1, gt == 1)
  np.testing.assert_allclose(got['dice'], [12 / 14, 0.0, 1.0])
  np.testing.assert_allclose(got['jaccard'], [6 / 8, 0.0, 1.0])
  # Class 1: the 2x3 block's surface is all its voxels, at distance 0 from gt's surface, so asd
  # is 0; the gt column x=3 (2 voxels) is 1 away, the rest 0.
  np.testing.assert_allclose(got['asd'], [0.0, np.nan, 0.0])
  np.testing.assert_allclose(got['hd95'], [want_class1['hd95'], np.nan, 0.0])
  # 14 pooled distances sorted: twelve 0 then two 1; percentile 95 at index 0.95 * 13 = 12.35
  # falls between two 1s.
  np.testing.assert_allclose(got['hd95'][0], 1.0, rtol=1e-12)

  ssl = metrics.per_class_metrics(pred, gt, num_classes=4, empty='ssl4mis')
  np.testing.assert_allclose(ssl['hd95'], [1.0, 0.0, 0.0], rtol=1e-12)


def test_per_class_metrics_rejects_out_of_range_labels():
  labels = np.array([[0, 1], [2, 3]])
  with pytest.raises(ValueError, match='labels'):
    metrics.per_class_metrics(labels, labels, num_classes=3)


def _volume(dice, hd95):
  hd95 = np.asarray(hd95, dtype=np.float64)
  return {'dice': np.asarray(dice, dtype=np.float64), 'jaccard': np.asarray(dice) / 2,
          'hd95': hd95, 'asd': hd95 / 4}


def test_summarize_nan_handling_and_counts():
  per_volume = [
      _volume([0.8, 0.5], [2.0, np.nan]),
      _volume([0.6, 0.7], [4.0, np.nan]),
      _volume([0.7, 0.0], [9.0, np.nan]),
      _volume([0.9, 0.6], [np.nan, np.nan]),
  ]
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # an all-NaN class must not warn
    summary = metrics.summarize(per_volume)
  np.testing.assert_allclose(summary['dice']['mean'], [0.75, 0.45])
  np.testing.assert_allclose(
      summary['dice']['std'], [np.std([0.8, 0.6, 0.7, 0.9]), np.std([0.5, 0.7, 0.0, 0.6])])
  np.testing.assert_array_equal(summary['dice']['count'], [4, 4])
  np.testing.assert_allclose(summary['hd95']['mean'], [5.0, np.nan])
  np.testing.assert_allclose(summary['hd95']['std'], [math.sqrt(26 / 3), np.nan])
  np.testing.assert_array_equal(summary['hd95']['count'], [3, 0])
  np.testing.assert_array_equal(summary['hd95']['total'], [4, 4])
  np.testing.assert_allclose(summary['asd']['mean'], [1.25, np.nan])


def test_summarize_rejects_mismatched_volumes():
  with pytest.raises(ValueError):
    metrics.summarize([])
  with pytest.raises(ValueError, match='classes'):
    metrics.summarize([_volume([0.5, 0.5], [1.0, 1.0]), _volume([0.5], [1.0])])


def test_format_table():
  per_volume = [
      _volume([0.8, 0.5], [2.0, np.nan]),
      _volume([0.6, 0.7], [4.0, 3.0]),
  ]
  table = metrics.format_table(metrics.summarize(per_volume), ['RV', 'LV'], units='mm')
  lines = table.splitlines()
  assert 'HD95 (mm)' in table and 'ASD (mm)' in table
  assert lines[4] == '| RV | 0.7000 ± 0.1000 | 0.3500 ± 0.0500 | 3.00 ± 1.00 | 0.75 ± 0.25 |'
  assert lines[5] == '| LV | 0.6000 ± 0.1000 | 0.3000 ± 0.0500 | 3.00 ± 0.00 | 0.75 ± 0.00 |'
  # Mean over classes of the per-class means.
  assert lines[6] == '| mean | 0.6500 | 0.3250 | 3.00 | 0.75 |'
  assert 'LV in 1 of 2 volumes' in table
  assert 'RV in' not in table


def test_format_table_without_undefined_values():
  per_volume = [_volume([0.8], [2.0]), _volume([0.6], [4.0])]
  table = metrics.format_table(metrics.summarize(per_volume), ['Myo'])
  assert 'HD95 (voxels)' in table
  assert 'undefined' not in table
  assert table.splitlines()[-1] == '| mean | 0.7000 | 0.3500 | 3.00 | 0.75 |'
  with pytest.raises(ValueError, match='units'):
    metrics.format_table(metrics.summarize(per_volume), ['Myo'], units='cm')
  with pytest.raises(ValueError, match='class names'):
    metrics.format_table(metrics.summarize(per_volume), ['Myo', 'LV'])


def test_acdc_sized_volume_is_fast():
  import time
  shape = (10, 256, 216)
  gt = np.zeros(shape, dtype=np.int64)
  gt[:, 60:180, 50:170] = np.where(_ball((120, 120), (60, 60), 50), 1, 0)
  gt[:, 90:150, 80:140][:, _ball((60, 60), (30, 30), 20)] = 2
  pred = np.roll(gt, 3, axis=2)
  start = time.perf_counter()
  got = metrics.per_class_metrics(pred, gt, num_classes=3, spacing=(10.0, 1.5, 1.5))
  assert time.perf_counter() - start < 5.0
  assert np.all(np.isfinite(got['hd95']))
