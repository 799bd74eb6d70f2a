"""A small 3D phantom with one foreground class: the default data of 3D runs without `--data-dir`.

Each volume is a cube of side `size` holding one target (label 1): a randomly oriented ellipsoid
with a low-order boundary wobble, bright on a darker, smoothly varying background, plus two or
three distractor blobs (label 0) whose intensity overlaps the target's, so intensity alone does
not separate the classes and shape has to be learned. Smoothed, multiplied by a smooth bias field,
Gaussian noise added, min-max normalized to [0, 1]. A 48^3 volume takes about 50 ms.
Volumes are a pure function of (seed, index); splits never share an index.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxseg.data import spec, splits
from jaxseg.data.sources import SegmentationData, VolumeSource
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError

NUM_CLASSES = 2
CLASS_NAMES = ('target',)


def _rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random 3D rotation matrix (QR of a Gaussian matrix, signs fixed)."""
  q, r = np.linalg.qr(rng.standard_normal((3, 3)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def _ellipsoid(grid: np.ndarray, center, radii, rotation, wobble: float = 0.0,
               phase: float = 0.0) -> np.ndarray:
  """Boolean mask of an ellipsoid; `grid` is (3, D, H, W) voxel coordinates."""
  rel = np.tensordot(rotation.T, grid - np.asarray(center, np.float32)[:, None, None, None], 1)
  p = [rel[i] / radii[i] for i in range(3)]
  r2 = p[0] ** 2 + p[1] ** 2 + p[2] ** 2
  if wobble:
    # A three-lobed bump around the third body axis, strongest at the equator, so targets are
    # not perfect ellipsoids; p2^2 / r2 is the squared cosine of the polar angle, in [0, 1].
    cos2 = p[2] ** 2 / (r2 + 1e-6)
    r2 = r2 * (1.0 + wobble * np.cos(3.0 * np.arctan2(p[1], p[0]) + phase) * (1.0 - cos2))
  return r2 < 1.0


def make_volume(seed: int, index: int, size: int = 48) -> Volume:
  """One phantom volume `synth3d_{index:03d}` of shape (size, size, size)."""
  if size < 16:
    raise ConfigError(f'synthetic 3D data : size must be >= 16, got {size}')
  if seed < 0 or index < 0:
    raise ConfigError(f'synthetic 3D data : seed and index must be >= 0, got {seed}, {index}')
  rng = np.random.default_rng([seed, index, 3])
  f32 = np.float32
  grid = np.stack(np.meshgrid(*(np.arange(size, dtype=f32),) * 3, indexing='ij'))
  s = size / 48.0  # shapes scale with the volume

  radii = rng.uniform(5.0, 11.0, size=3) * s
  center = rng.uniform(size * 0.3, size * 0.7, size=3)
  target = _ellipsoid(grid, center, radii, _rotation(rng), wobble=rng.uniform(0.0, 0.3),
                      phase=rng.uniform(0, 2 * np.pi))

  i_target = rng.uniform(0.6, 0.9)
  image = np.full((size,) * 3, rng.uniform(0.15, 0.35), f32)
  # Distractors first, so the target is drawn over any overlap and the label stays exact.
  for _ in range(int(rng.integers(2, 4))):
    blob = _ellipsoid(grid, rng.uniform(0, size, size=3), rng.uniform(3.0, 8.0, size=3) * s,
                      _rotation(rng))
    image[blob & ~target] = i_target * rng.uniform(0.75, 1.15)
  image[target] = i_target

  image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.2))
  axis = np.linspace(-1.0, 1.0, size, dtype=f32)
  c = rng.normal(0.0, 0.15, size=3).astype(f32)
  image *= np.exp(c[0] * axis[:, None, None] + c[1] * axis[None, :, None] + c[2] * axis[None, None])
  image += rng.normal(0.0, rng.uniform(0.02, 0.06), size=image.shape).astype(f32)
  lo, hi = image.min(), image.max()
  image = ((image - lo) / max(hi - lo, 1e-6)).astype(f32)
  return Volume(name=f'synth3d_{index:03d}', image=image, label=target.astype(np.uint8),
                spacing=(1.0, 1.0, 1.0), path='')


def make_dataset(seed: int = 0, num_train: int = 24, num_val: int = 4, num_test: int = 4,
                 size: int = 48) -> dict[str, list[Volume]]:
  """{'train', 'val', 'test'} lists of volumes, numbered train first, then val, then test."""
  counts = {'train': num_train, 'val': num_val, 'test': num_test}
  for split, n in counts.items():
    if n < 0:
      raise ConfigError(f'synthetic 3D data : num_{split} must be >= 0, got {n}')
  out, start = {}, 0
  for split, n in counts.items():
    out[split] = [make_volume(seed, i, size) for i in range(start, start + n)]
    start += n
  return out


def load(config) -> SegmentationData:
  """The 3D phantom as SegmentationData: the first `data.labeled_num` training volumes labeled."""
  splits.check_num_classes(config, NUM_CLASSES, 'the synthetic 3D phantom')
  s = SPEC.block(config)
  data = make_dataset(seed=config.seed, num_train=s['num_train'], num_val=s['num_val'],
                      num_test=s['num_test'], size=s['size'])
  n = splits.num_labeled(config, s['num_train'], 'synthetic 3D phantom')
  return spec.assemble(
      'synthetic3d', data['train'], n, {'val': data['val'], 'test': data['test']},
      f'synthetic 3D phantom: {n} labeled volumes, {s["num_train"] - n} unlabeled, '
      f'{s["num_val"]} validation volumes ({s["size"]}^3)', source=VolumeSource)


SPEC = spec.DatasetSpec(
    name='synthetic3d', detect=None, load=load, classes=spec.fixed_classes(CLASS_NAMES),
    config={'num_train': 24, 'num_val': 4, 'num_test': 4, 'size': 48},
    axes=spec.slices_last, normalize=spec.minmax)
