"""3D training data for Grain: a source of whole volumes and the augmentations that crop them.

The augmentations are UA-MT's (`dataloaders/la_heart.py`): `RandomRotFlip` (rot90 by k in 0..3
in the plane of axes 0 and 1, then a flip along axis 0 or 1) and `RandomCrop` (zero-pad a volume
that is not larger than the crop along some axis, symmetrically plus 3 voxels, so all of it,
foreground included, stays inside; then a uniformly placed crop). Volumes keep their stored axis
order (LA and Pancreas: x, y, z, slices last), so UA-MT's crop 112x112x80 applies verbatim and the
rotation stays in-plane.

Elements: labeled `{'image': float32 (D, H, W), 'label': int32 (D, H, W)}`, unlabeled
`{'image_weak', 'image_strong': float32 (D, H, W)}` at the crop shape, the keys the 2D pipeline
produces, so `pipeline.PairedIterator` and the train step need nothing 3D-specific. All draws
come from the generator Grain passes in (seeded by pipeline seed and element index).
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from jaxseg.errors import ConfigError

# UA-MT pads this many voxels beyond the crop on each side when a volume is too small.
CROP_PAD_MARGIN = 3


def check_crop_shape(crop_shape: Sequence[int]) -> tuple[int, int, int]:
  crop = tuple(int(c) for c in crop_shape)
  if len(crop) != 3 or min(crop) < 1:
    raise ConfigError(f'data.crop_shape: expected three positive sizes (D, H, W), got {crop}')
  return crop


def random_rot_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
  """UA-MT's RandomRotFlip: rot90 by k in 0..3 over axes (0, 1), then flip axis 0 or 1.

  As in UA-MT the flip is unconditional, so the 8 equally likely draws give the 4 in-plane
  reflections (flip_0 rot_k = flip_1 rot_k+2), each with probability 1/4, and never the identity.
  """
  k = int(rng.integers(0, 4))
  axis = int(rng.integers(0, 2))
  image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
  if label is not None:
    label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
  return image, label


def random_crop(image: np.ndarray, label: np.ndarray | None, crop_shape: Sequence[int],
                rng: np.random.Generator):
  """UA-MT's RandomCrop (see the module docstring); returns arrays of exactly `crop_shape`.

  As UA-MT: if the volume is at most as large as the crop along some axis, every axis is
  zero-padded by max((crop - size) // 2 + 3, 0) voxels per side; the corner is then drawn from
  [0, size - crop) (numpy's exclusive high: UA-MT never uses the last position). After that
  padding every axis is longer than the crop, so the range is never empty.
  """
  if any(s <= c for s, c in zip(image.shape, crop_shape)):
    pads = [(p, p) for p in (max((c - s) // 2 + CROP_PAD_MARGIN, 0)
                             for s, c in zip(image.shape, crop_shape))]
    image = np.pad(image, pads, mode='constant', constant_values=0)
    if label is not None:
      label = np.pad(label, pads, mode='constant', constant_values=0)
  corner = [int(rng.integers(0, s - c)) for s, c in zip(image.shape, crop_shape)]
  window = tuple(slice(o, o + c) for o, c in zip(corner, crop_shape))
  return image[window], (label[window] if label is not None else None)


def augment(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
            crop_shape: Sequence[int], rot_flip: bool = True):
  """Optional rot90/flip, then the random crop; float32 image and int32 label, contiguous."""
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3:
    raise ValueError(f'expected a 3D (D, H, W) volume, got shape {image.shape}')
  if label is not None and label.shape != image.shape:
    raise ValueError(f'label shape {label.shape} differs from image shape {image.shape}')
  if rot_flip:
    image, label = random_rot_flip(image, label, rng)
  image, label = random_crop(image, label, crop_shape, rng)
  image = np.ascontiguousarray(image, dtype=np.float32)
  if label is not None:
    label = np.ascontiguousarray(label, dtype=np.int32)
  return image, label


class Crop3D(grain.transforms.RandomMap):
  """Labeled stream: `{'image', 'label'}` at `crop_shape`."""

  def __init__(self, crop_shape: Sequence[int], rot_flip: bool = True):
    self.crop_shape = check_crop_shape(crop_shape)
    self.rot_flip = bool(rot_flip)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = augment(element['image'], element.get('label'), rng, self.crop_shape,
                           self.rot_flip)
    out = {'image': image}
    if label is not None:
      out['label'] = label
    return out


class TwoViews3D(grain.transforms.RandomMap):
  """Unlabeled stream: one crop as `image_weak`; `image_strong` is the same crop plus clipped
  Gaussian noise (UA-MT's noise: clip(N(0, s), -2s, 2s)), or the same array when s = 0."""

  def __init__(self, crop_shape: Sequence[int], rot_flip: bool = True, noise_std: float = 0.0):
    if noise_std < 0:
      raise ConfigError(f'data.strong_noise: must be >= 0, got {noise_std}')
    self.crop_shape = check_crop_shape(crop_shape)
    self.rot_flip = bool(rot_flip)
    self.noise_std = float(noise_std)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    weak, _ = augment(element['image'], None, rng, self.crop_shape, self.rot_flip)
    strong = weak
    if self.noise_std > 0:
      s = self.noise_std
      noise = np.clip(s * rng.standard_normal(weak.shape, dtype=np.float32), -2 * s, 2 * s)
      strong = weak + noise
    return {'image_weak': weak, 'image_strong': strong}
