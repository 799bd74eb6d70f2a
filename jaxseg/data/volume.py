"""The in-memory unit every data source produces: one 3D volume with its label and geometry."""

from __future__ import annotations

import dataclasses

import numpy as np


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
