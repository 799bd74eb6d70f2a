"""Single-file readers (SSL4MIS h5, NIfTI) and the original ACDC NIfTI layout.

Every problem with a file raises `DataError` with one line that starts with the file path, so
the user can see at once which file is bad and why.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping

import h5py
import nibabel as nib
import numpy as np

from jaxseg.data.volume import Volume
from jaxseg.errors import DataError

PathLike = str | os.PathLike

# At most this many offending values are listed in a message, to keep it one readable line.
_MAX_LISTED = 10

# The standard SSL4MIS ACDC split (github.com/HiLab-git/SSL4MIS, data/ACDC/{train,val}.list).
# Generated once from those lists; the order of TRAIN_PATIENTS is the order of first appearance
# in train.list and matters: SSL4MIS's labelled subset is the first N training patients.
TRAIN_PATIENTS: tuple[str, ...] = (
  'patient099', 'patient038', 'patient050', 'patient100', 'patient058', 'patient021',
  'patient049', 'patient020', 'patient072', 'patient040', 'patient060', 'patient089',
  'patient004', 'patient056', 'patient098', 'patient096', 'patient031', 'patient018',
  'patient094', 'patient047', 'patient048', 'patient055', 'patient097', 'patient074',
  'patient043', 'patient041', 'patient063', 'patient037', 'patient095', 'patient054',
  'patient026', 'patient088', 'patient032', 'patient069', 'patient006', 'patient071',
  'patient012', 'patient073', 'patient061', 'patient017', 'patient025', 'patient010',
  'patient057', 'patient029', 'patient051', 'patient005', 'patient036', 'patient046',
  'patient062', 'patient034', 'patient076', 'patient092', 'patient070', 'patient077',
  'patient067', 'patient003', 'patient091', 'patient016', 'patient014', 'patient044',
  'patient042', 'patient090', 'patient053', 'patient027', 'patient035', 'patient086',
  'patient023', 'patient009', 'patient079', 'patient015',
)
VAL_PATIENTS: tuple[str, ...] = (
  'patient028', 'patient085', 'patient082', 'patient087', 'patient019', 'patient030',
  'patient078', 'patient045', 'patient002', 'patient039',
)
# patient001..patient100 not in train or val, ascending.
TEST_PATIENTS: tuple[str, ...] = (
  'patient001', 'patient007', 'patient008', 'patient011', 'patient013', 'patient022',
  'patient024', 'patient033', 'patient052', 'patient059', 'patient064', 'patient065',
  'patient066', 'patient068', 'patient075', 'patient080', 'patient081', 'patient083',
  'patient084', 'patient093',
)
SSL4MIS_ACDC_SPLIT: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
  {'train': TRAIN_PATIENTS, 'val': VAL_PATIENTS, 'test': TEST_PATIENTS})

_PATIENT_RE = re.compile(r'^patient\d{3}$')
_NIFTI_EXTS = ('.nii.gz', '.nii')


def one_line(exc: BaseException) -> str:
  """The exception as `Type: message` on one line (library messages may span several)."""
  text = ' '.join(str(exc).split())
  return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _format_values(values: np.ndarray) -> str:
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


def _check_num_classes(num_classes: int) -> None:
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
      raise DataError(f'{path}: non-integer label values {_format_values(values)}')
  elif not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
    raise DataError(f'{path}: label has non-numeric dtype {dtype}')
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    values = np.unique(label)
    values = values[(values < 0) | (values >= num_classes)]
    raise DataError(f'{path}: label values {_format_values(values)} outside '
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
  _check_num_classes(num_classes)
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


def nifti_path(folder: str, stem: str) -> str:
  """`folder/stem.nii.gz`, or `.nii` if only that exists (the .nii.gz name for messages)."""
  for ext in _NIFTI_EXTS:
    candidate = os.path.join(folder, stem + ext)
    if os.path.exists(candidate):
      return candidate
  return os.path.join(folder, stem + _NIFTI_EXTS[0])


def _read_info_cfg(path: str) -> dict[str, str]:
  """`key: value` lines of an ACDC Info.cfg."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{path}: cannot read Info.cfg: {one_line(e)}') from e
  info = {}
  for line in lines:
    if ':' in line:
      key, value = line.split(':', 1)
      info[key.strip()] = value.strip()
  return info


def _gt_frames(patient_dir: str, pid: str) -> list[int]:
  pattern = re.compile(rf'^{pid}_frame(\d+)_gt(?:\.nii\.gz|\.nii)$')
  frames = {int(m.group(1)) for name in os.listdir(patient_dir)
            if (m := pattern.match(name))}
  return sorted(frames)


def _acdc_frame_number(patient_dir: str, pid: str, frame_index: int) -> int:
  """The real frame number of ED (frame_index 1) or ES (2): Info.cfg, else sorted gt frames."""
  cfg = os.path.join(patient_dir, 'Info.cfg')
  if os.path.exists(cfg):
    key = ('ED', 'ES')[frame_index - 1]
    info = _read_info_cfg(cfg)
    if key not in info:
      raise DataError(f'{cfg}: no {key!r} entry (keys present: {sorted(info)})')
    try:
      # Some releases write `ED: 1.0`; accept a whole-number float.
      number = float(info[key])
      if not number.is_integer() or number < 0:
        raise ValueError
      return int(number)
    except ValueError:
      raise DataError(f'{cfg}: {key} is {info[key]!r}, not a frame number') from None
  frames = _gt_frames(patient_dir, pid)
  if len(frames) != 2:
    raise DataError(f'{patient_dir}: no Info.cfg, and expected 2 ground-truth frames '
                    f'{pid}_frameNN_gt.nii.gz to tell ED from ES, found {len(frames)}')
  # ED comes before ES in every ACDC acquisition, so the sorted order gives (ED, ES).
  return frames[frame_index - 1]


def load_acdc_nifti_volume(patient_dir: PathLike, frame_index: int, *, num_classes: int = 4,
                           require_label: bool = True) -> Volume:
  """Loads one labelled frame of an original ACDC NIfTI patient folder, as SSL4MIS would.

  The folder `patientXXX/` holds `patientXXX_frameYY.nii.gz`, `patientXXX_frameYY_gt.nii.gz`
  and `Info.cfg` (`ED: 1`, `ES: 12`, ...). The real frame number is taken from Info.cfg; if
  Info.cfg is missing, the two ground-truth frames found are sorted and the first is taken as
  ED, the second as ES (ED precedes ES in every ACDC acquisition).

  The result matches SSL4MIS's h5 files: the volume is named `patientXXX_frame01` (ED) or
  `patientXXX_frame02` (ES) whatever the real frame number; the image is transposed from
  nibabel's (X, Y, Z) to (D, H, W) = (Z, Y, X), the order SimpleITK's GetArrayFromImage gives,
  and min-max normalized per volume as `(x - min) / (max - min)`.

  The affine is the NIfTI's, unchanged, and refers to the (X, Y, Z) order: to save a
  prediction `pred` of shape (D, H, W), transpose it back first, e.g.
  `nib.Nifti1Image(pred.transpose(2, 1, 0), volume.affine)`.

  Args:
    patient_dir: the `patientXXX` folder.
    frame_index: 1 for end-diastole (ED), 2 for end-systole (ES).
    num_classes: labels must lie in [0, num_classes).
    require_label: if False, a missing `_gt` file gives `label=None` (unlabelled test data).

  Returns:
    A Volume with spacing (z, y, x) in millimetres and the NIfTI affine.

  Raises:
    DataError: missing folder or files, unreadable files, bad Info.cfg, shape mismatch, bad
      label values, constant image.
  """
  if frame_index not in (1, 2):
    raise ValueError(f'frame_index must be 1 (ED) or 2 (ES), got {frame_index}')
  _check_num_classes(num_classes)
  patient_dir = os.fspath(patient_dir)
  if not os.path.isdir(patient_dir):
    raise DataError(f'{patient_dir}: ACDC patient folder not found')
  pid = os.path.basename(os.path.normpath(patient_dir))
  if not _PATIENT_RE.match(pid):
    raise DataError(f'{patient_dir}: folder name {pid!r} is not of the form patientXXX')

  frame = _acdc_frame_number(patient_dir, pid, frame_index)
  image_path = nifti_path(patient_dir, f'{pid}_frame{frame:02d}')
  gt_path = nifti_path(patient_dir, f'{pid}_frame{frame:02d}_gt')
  data, affine, zooms = read_nifti(image_path)
  if data.ndim != 3:
    raise DataError(f'{image_path}: expected a 3D image, got shape {data.shape}')

  label = None
  if require_label or os.path.exists(gt_path):
    gt, _, _ = read_nifti(gt_path)
    if gt.shape != data.shape:
      raise DataError(f'{gt_path}: label shape {gt.shape} differs from image shape '
                      f'{data.shape} of {os.path.basename(image_path)}')
    label = np.ascontiguousarray(check_label(gt_path, gt, num_classes).transpose(2, 1, 0))

  # float64 arithmetic, then float32, as SSL4MIS does on SimpleITK's integer arrays.
  x = data.astype(np.float64)
  lo, hi = x.min(), x.max()
  if hi == lo:
    raise DataError(f'{image_path}: image is constant ({lo}), cannot normalize to [0, 1]')
  image = ((x - lo) / (hi - lo)).astype(np.float32).transpose(2, 1, 0)

  return Volume(
    name=f'{pid}_frame{frame_index:02d}',
    image=np.ascontiguousarray(image),
    label=label,
    spacing=(zooms[2], zooms[1], zooms[0]),
    affine=affine,
    path=image_path,
  )


def _scan_patient_dirs(root: str) -> list[tuple[str, str]]:
  """(`patientXXX`, folder) for every patient folder in root, root/training, root/testing."""
  found = []
  for folder in (root, os.path.join(root, 'training'), os.path.join(root, 'testing')):
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      path = os.path.join(folder, name)
      if _PATIENT_RE.match(name) and os.path.isdir(path):
        found.append((name, path))
  return found


def find_acdc_patient_dirs(root: PathLike) -> dict[str, str]:
  """Maps `patientXXX` to its folder, searching root, root/training and root/testing.

  Raises:
    DataError: root is not a folder, or a patient appears in two places.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f'{root}: folder not found')
  found: dict[str, str] = {}
  for name, path in _scan_patient_dirs(root):
    if name in found:
      raise DataError(f'{root}: {name} found twice, in {found[name]} and {path}')
    found[name] = path
  return dict(sorted(found.items()))


def is_acdc_nifti_layout(root: PathLike) -> bool:
  """Whether root holds ACDC patient folders with at least one `patientXXX_frameYY` NIfTI.

  Never raises: a layout with problems (e.g. a duplicated patient) still counts, so that
  loading it reports the problem instead of the data going unrecognized.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    return False
  for pid, folder in _scan_patient_dirs(root):
    pattern = re.compile(rf'^{pid}_frame\d+(?:\.nii\.gz|\.nii)$')
    try:
      names = os.listdir(folder)
    except OSError:
      continue
    if any(pattern.match(name) for name in names):
      return True
  return False
