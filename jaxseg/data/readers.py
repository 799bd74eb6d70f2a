"""Single-file readers (SSL4MIS h5, NIfTI) and the CT window, shared by the dataset modules.

Every problem with a file raises `DataError` with one line that starts with the file path, so
the user can see at once which file is bad and why.
"""

from __future__ import annotations

import os

import h5py
import nibabel as nib
import numpy as np

from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError

PathLike = str | os.PathLike

# At most this many offending values are listed in a message, to keep it one readable line.
_MAX_LISTED = 10

_NIFTI_EXTS = ('.nii.gz', '.nii')


def one_line(exc: BaseException) -> str:
  """The exception as `Type: message` on one line (library messages may span several)."""
  text = ' '.join(str(exc).split())
  return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def format_values(values: np.ndarray) -> str:
  """`[4, 7]`, or `[4, 7, ...] (12 values)` when long; integral floats print as ints."""
  shown = [int(v) if float(v).is_integer() else float(v) for v in values[:_MAX_LISTED]]
  text = '[' + ', '.join(str(v) for v in shown)
  if len(values) > _MAX_LISTED:
    return text + f', ...] ({len(values)} values)'
  return text + ']'


def check_file(path: str) -> None:
  if not os.path.exists(path):
    raise DataError(f'{path}: file not found')
  if os.path.isdir(path):
    raise DataError(f'{path}: is a directory, not a file')


def check_num_classes_range(num_classes: int) -> None:
  # Labels are returned as uint8, so more than 256 classes cannot be represented.
  if not 1 <= num_classes <= 256:
    raise ValueError(f'num_classes must be in 1..256, got {num_classes}')


def _check_image(path: str, image: np.ndarray, what: str = 'image') -> np.ndarray:
  """Numeric, non-empty and finite, as float32 (checked after the cast to catch overflow)."""
  if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
    raise DataError(f'{path}: {what} has non-numeric dtype {image.dtype}')
  if image.size == 0:
    raise DataError(f'{path}: {what} is empty, shape {image.shape}')
  image = image.astype(np.float32, copy=False)
  finite = np.isfinite(image)
  if not finite.all():
    n_nan = int(np.count_nonzero(np.isnan(image)))
    n_inf = int(image.size - np.count_nonzero(finite) - n_nan)
    raise DataError(f'{path}: {what} contains {n_nan} NaN and {n_inf} Inf values '
                    f'(of {image.size} voxels)')
  return image


def check_label(path: str, label: np.ndarray, num_classes: int) -> np.ndarray:
  """Integer class indices in [0, num_classes), as uint8."""
  dtype = label.dtype
  if np.issubdtype(dtype, np.floating):
    # Labels saved as floats are fine as long as every value is a whole number.
    bad = ~np.isfinite(label) | (label != np.round(label))
    if bad.any():
      values = np.unique(label[bad])
      raise DataError(f'{path}: non-integer label values {format_values(values)}')
  elif not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
    raise DataError(f'{path}: label has non-numeric dtype {dtype}')
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    values = np.unique(label)
    values = values[(values < 0) | (values >= num_classes)]
    raise DataError(f'{path}: label values {format_values(values)} outside '
                    f'0..{num_classes - 1}')
  return label.astype(np.uint8)


def _read_dataset(path: str, f: h5py.File, key: str) -> np.ndarray:
  if key not in f:
    raise DataError(f'{path}: key {key!r} missing (keys present: {sorted(f.keys())})')
  obj = f[key]
  if not isinstance(obj, h5py.Dataset):
    raise DataError(f'{path}: key {key!r} is a {type(obj).__name__}, not a dataset')
  try:
    return np.asarray(obj[()])
  except Exception as e:  # noqa: BLE001 - HDF5 raises OSError, KeyError... on damaged data.
    raise DataError(f'{path}: cannot read {key!r} (corrupt or truncated file?): '
                    f'{one_line(e)}') from e


def read_h5(path: PathLike, *, num_classes: int,
            require_label: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads an SSL4MIS-style h5 file with datasets `image` and `label`.

  Args:
    path: the .h5 file.
    num_classes: labels must lie in [0, num_classes).
    require_label: if False, a missing `label` key gives None instead of an error.

  Returns:
    (image float32, label uint8 of the same shape or None); 2D or 3D, as stored.

  Raises:
    DataError: one line starting with the path, for every problem with the file.
  """
  check_num_classes_range(num_classes)
  path = os.fspath(path)
  check_file(path)
  try:
    f = h5py.File(path, 'r')
  except Exception as e:  # noqa: BLE001 - h5py raises OSError for most, others for odd files.
    raise DataError(f'{path}: not a readable HDF5 file (corrupt or truncated?): '
                    f'{one_line(e)}') from e
  with f:
    image = _read_dataset(path, f, 'image')
    label = None
    if require_label or 'label' in f:
      label = _read_dataset(path, f, 'label')
  if image.ndim not in (2, 3):
    raise DataError(f'{path}: image must be 2D or 3D, got shape {image.shape}')
  if label is not None and label.shape != image.shape:
    raise DataError(f'{path}: label shape {label.shape} differs from image shape '
                    f'{image.shape}')
  image = _check_image(path, image)
  if label is not None:
    label = check_label(path, label, num_classes)
  return image, label


def read_nifti(path: PathLike) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
  """Reads a NIfTI file (.nii or .nii.gz) with nibabel.

  Returns:
    (data float32 in nibabel's (X, Y, Z[, ...]) order with scaling applied, the 4x4 affine as
    float64, the voxel sizes (zooms) in the same axis order).

  Raises:
    DataError: one line starting with the path: missing, corrupt or truncated file, NaN/Inf.
  """
  path = os.fspath(path)
  check_file(path)
  try:
    img = nib.load(path)
    # Data is read lazily, so a truncated .gz only fails here.
    data = np.asarray(img.get_fdata(dtype=np.float32))
    affine = np.array(img.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in img.header.get_zooms())
  # nibabel surfaces damage as ImageFileError, HeaderDataError, gzip/zlib errors, EOFError,
  # struct.error, ValueError...; all of them mean the same thing to the user.
  except Exception as e:  # noqa: BLE001
    raise DataError(f'{path}: not a readable NIfTI file (corrupt or truncated?): '
                    f'{one_line(e)}') from e
  data = _check_image(path, data, what='data')
  return data, affine, zooms


def read_nifti_label(label_path: str, image_shape: tuple[int, ...], image_path: str) -> np.ndarray:
  """The label NIfTI of an image as stored (float32, the file's values), its shape checked."""
  label, _, _ = read_nifti(label_path)
  if label.shape != tuple(image_shape):
    raise DataError(f'{label_path}: label shape {label.shape} differs from image shape '
                    f'{tuple(image_shape)} of {os.path.basename(image_path)}')
  return label


def read_volume_and_label(
    image_path: str, label_path: str, require_label: bool = True, what: str = 'image'
) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray | None]:
  """(image, affine, zooms, label as stored or None) of a 3D image NIfTI and its label file;
  the label is read when required or present, its shape checked against the image's."""
  data, affine, zooms = read_nifti(image_path)
  if data.ndim != 3:
    raise DataError(f'{image_path}: expected a 3D {what}, got shape {data.shape}')
  label = None
  if require_label or os.path.exists(label_path):
    label = read_nifti_label(label_path, data.shape, image_path)
  return data, affine, zooms, label


def nifti_path(folder: str, stem: str) -> str:
  """`folder/stem.nii.gz`, or `.nii` if only that exists (the .nii.gz name for messages)."""
  for ext in _NIFTI_EXTS:
    candidate = os.path.join(folder, stem + ext)
    if os.path.exists(candidate):
      return candidate
  return os.path.join(folder, stem + _NIFTI_EXTS[0])


def window_ct(hu: np.ndarray, window: tuple[float, float], key: str = 'window') -> np.ndarray:
  """Clips HU to `window` and maps it linearly to [0, 1]: lo -> 0, hi -> 1, as float32.

  The bounds are the window's, not the volume's min and max, so a given HU value maps to the
  same intensity in every case.
  """
  lo, hi = float(window[0]), float(window[1])
  if not hi > lo:
    raise ConfigError(f'{key}: expected (low, high) with low < high, got {window}')
  x = np.clip(hu.astype(np.float64), lo, hi)
  return ((x - lo) / (hi - lo)).astype(np.float32)


def case_name(path: str) -> str:
  """A NIfTI file's name without .nii.gz or .nii."""
  name = os.path.basename(path)
  for ext in _NIFTI_EXTS:
    if name.endswith(ext):
      return name[:-len(ext)]
  return name


def minmax_normalize(x: np.ndarray, path: str) -> np.ndarray:
  """`(x - min) / (max - min)` over the whole volume, as a new C-contiguous float32 array.

  float32 arithmetic, not float64, because an MM-WHS CT volume is 300 MB in float32 already;
  x may be a transposed view, and the result is written straight into C order.

  Raises:
    DataError: the image is constant (nothing to normalize).
  """
  lo, hi = float(x.min()), float(x.max())
  if hi == lo:
    raise DataError(f'{path}: image is constant ({lo:g}), cannot normalize to [0, 1]')
  out = np.empty(x.shape, np.float32)
  np.subtract(x, lo, out=out, dtype=np.float32)
  out /= hi - lo
  return out


def to_dhw(array_xyz: np.ndarray) -> np.ndarray:
  """nibabel's (X, Y, Z) as (D, H, W) = (Z, Y, X), a view: slices along the last NIfTI axis."""
  return array_xyz.transpose(2, 1, 0)


def read_pair(image_path: str, label_path: str,
              require_label: bool = True) -> tuple[Volume, np.ndarray | None]:
  """Reads a 3D image and its label file, both as (D, H, W) = (Z, Y, X).

  MSD and MM-WHS read their cases so. The affine is the file's and refers to nibabel's
  (X, Y, Z) order: save a prediction `pred` of shape (D, H, W) as
  `nib.Nifti1Image(pred.transpose(2, 1, 0), volume.affine)`.

  Returns:
    (the Volume, image min-max normalized, label None; the label with the file's values as
    a float32 (D, H, W) view, or None when not required and absent); the caller checks or maps
    the values into a contiguous array.

  Raises:
    DataError: missing or unreadable files, not 3D, label shape differs from the image's,
      constant image.
  """
  data, affine, zooms, label = read_volume_and_label(image_path, label_path, require_label,
                                                     'single-channel image')
  label = None if label is None else to_dhw(label)
  # A view in, a C-contiguous copy out: one copy of the volume besides the file's data.
  volume = Volume(name=case_name(image_path), image=minmax_normalize(to_dhw(data), image_path),
                  label=None, spacing=(zooms[2], zooms[1], zooms[0]), affine=affine,
                  path=image_path)
  return volume, label
