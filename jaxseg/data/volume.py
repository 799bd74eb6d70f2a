"""The in-memory unit every data source produces: one 3D volume with its label and geometry, and
the in-plane resize that datasets apply at load (kept free of Grain, so the dataset table is light)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Volume:
  """A volume in (D, H, W) order, slices along axis 0.

  Attributes:
    name: identifier, e.g. `patient028_frame01`.
    image: float32 (D, H, W), intensities normalized to [0, 1] per volume.
    label: uint8 (D, H, W) class indices, or None for unlabeled data.
    spacing: voxel size in millimetres along (D, H, W), or None when unknown (then metrics are
      in voxels).
    affine: 4x4 voxel-to-world matrix of the file the volume came from, or None; kept so that
      predictions can be written back in the same orientation.
    path: file the volume was read from ('' for generated data); used in error messages.
  """

  name: str
  image: np.ndarray
  label: np.ndarray | None
  spacing: tuple[float, float, float] | None = None
  affine: np.ndarray | None = None
  path: str = ''

  @property
  def num_slices(self) -> int:
    return self.image.shape[0]


def _fit(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Crops or edge-pads the trailing rows and columns of `x` to exactly `shape`."""
  x = x[:shape[0], :shape[1]]
  pad_h, pad_w = shape[0] - x.shape[0], shape[1] - x.shape[1]
  if pad_h or pad_w:
    x = np.pad(x, ((0, pad_h), (0, pad_w)), mode='edge')
  return x


def resize(image: np.ndarray, size: int | tuple[int, int], order: int = 1) -> np.ndarray:
  """Resizes a 2D array to exactly (size, size), or (H, W) for a pair, with `scipy.ndimage.zoom`.

  Args:
    image: (H, W) array; an image or a label map.
    size: output side length, or the output (H, W) (evaluation resizes predictions back).
    order: spline order; 0 (nearest) for labels so class values stay in the original set,
      1 or 3 for images.

  Returns:
    array of the requested shape and the input dtype.
  """
  if image.ndim != 2:
    raise ValueError(f'resize expects a 2D array, got shape {image.shape}')
  shape = (size, size) if isinstance(size, int) else tuple(size)
  h, w = image.shape
  if (h, w) == shape:
    return image.copy()
  out = ndimage.zoom(image, (shape[0] / h, shape[1] / w), order=order)
  # zoom rounds h * (size / h), which can land one pixel off after floating-point error.
  return _fit(out, shape)


def resize_volume(volume: Volume, size: int, image_order: int) -> Volume:
  """Every slice resized in-plane to (size, size), labels by nearest neighbour; spacing scaled.

  Datasets whose training slices are resized at load (KiTS19, MSD, MM-WHS) use it. The affine
  is dropped: it no longer maps these voxels.
  """
  _, h, w = volume.image.shape
  image = np.stack([np.clip(resize(s, size, order=image_order), 0.0, 1.0)
                    for s in volume.image]).astype(np.float32)
  label = None if volume.label is None else np.stack(
      [resize(s, size, order=0) for s in volume.label])
  spacing = None if volume.spacing is None else (
      volume.spacing[0], volume.spacing[1] * h / size, volume.spacing[2] * w / size)
  return Volume(name=volume.name, image=image, label=label, spacing=spacing,
                affine=None, path=volume.path)


def resized(load: Callable[[str], Volume], size: int,
            image_order: int) -> Callable[[str], Volume]:
  """`load` followed by `resize_volume` to `size` (0: `load` itself, native size)."""
  if not size:
    return load
  return lambda name: resize_volume(load(name), size, image_order)
