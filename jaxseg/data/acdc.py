"""ACDC cine MRI in its original NIfTI release, with SSL4MIS's patient split.

Layout: `patientXXX/patientXXX_frameYY[_gt].nii.gz` and `Info.cfg` (ED and ES frame numbers),
in the folder itself or in its `training/` and `testing/` subfolders. Labels: 0 background,
1 RV, 2 MYO, 3 LV. The split is SSL4MIS's (`TRAIN_PATIENTS`, `VAL_PATIENTS`,
`TEST_PATIENTS`); the labeled patients are the first `data.labeled_num` of TRAIN_PATIENTS,
each giving its ED and ES frames. Axis order: nibabel's (X, Y, Z) as (D, H, W) = (Z, Y, X),
min-max normalized per volume, as SSL4MIS prepared its h5 files (ssl4mis.py).
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping

import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.volume import Volume
from jaxseg.errors import DataError

CLASS_NAMES = ('RV', 'MYO', 'LV')

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


def _read_info_cfg(path: str) -> dict[str, str]:
  """`key: value` lines of an ACDC Info.cfg."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{path}: cannot read Info.cfg: {readers.one_line(e)}') from e
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


def load_volume(patient_dir: readers.PathLike, frame_index: int, *, num_classes: int = 4,
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
  readers.check_num_classes_range(num_classes)
  patient_dir = os.fspath(patient_dir)
  if not os.path.isdir(patient_dir):
    raise DataError(f'{patient_dir}: ACDC patient folder not found')
  pid = os.path.basename(os.path.normpath(patient_dir))
  if not _PATIENT_RE.match(pid):
    raise DataError(f'{patient_dir}: folder name {pid!r} is not of the form patientXXX')

  frame = _acdc_frame_number(patient_dir, pid, frame_index)
  image_path = readers.nifti_path(patient_dir, f'{pid}_frame{frame:02d}')
  gt_path = readers.nifti_path(patient_dir, f'{pid}_frame{frame:02d}_gt')
  data, affine, zooms, gt = readers.read_volume_and_label(image_path, gt_path, require_label)
  label = None if gt is None else np.ascontiguousarray(
      readers.check_label(gt_path, gt, num_classes).transpose(2, 1, 0))

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


def find_patient_dirs(root: readers.PathLike) -> dict[str, str]:
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


def is_acdc_layout(root: readers.PathLike) -> bool:
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


def _volumes(patient_dirs: Mapping[str, str], patients, num_classes: int) -> list[Volume]:
  return [load_volume(patient_dirs[p], frame, num_classes=num_classes)
          for p in patients for frame in (1, 2)]


def load(config) -> spec.SegmentationData:
  """ACDC NIfTI as SegmentationData: SSL4MIS's split, every volume read at load."""
  root = config.data.dir
  patient_dirs = find_patient_dirs(root)
  train = [p for p in TRAIN_PATIENTS if p in patient_dirs]
  if not train:
    raise DataError(f'{root}: no SSL4MIS training patients found in the ACDC NIfTI layout')
  n = splits.num_labeled(config, len(train), root)
  evaluation = {}
  for split, patients in (('val', VAL_PATIENTS), ('test', TEST_PATIENTS)):
    present = [p for p in patients if p in patient_dirs]
    if present:
      evaluation[split] = _volumes(patient_dirs, present, config.num_classes)
  if 'val' not in evaluation:
    raise DataError(f'{root}: none of the SSL4MIS validation patients '
                    f'({", ".join(VAL_PATIENTS[:3])}, ...) found')
  return spec.assemble(
      'acdc_nifti', _volumes(patient_dirs, train, config.num_classes), 2 * n, evaluation,
      f'ACDC (NIfTI) at {root}: {n} labeled patients, {len(train) - n} unlabeled, '
      f'{len(evaluation["val"])} validation volumes')


def check(root: str, config) -> spec.Findings:
  """Every frame of the SSL4MIS patients present; absent patients and extra folders noted."""
  try:
    patient_dirs = find_patient_dirs(root)
  except DataError as e:
    return spec.Findings({}, [str(e)])
  found = spec.Findings({})
  for split, patients in SSL4MIS_ACDC_SPLIT.items():
    present = [p for p in patients if p in patient_dirs]
    if len(present) < len(patients):
      missing = [p for p in patients if p not in patient_dirs]
      note = f'{root}: {len(missing)} of the {len(patients)} SSL4MIS {split} patients absent'
      if split in ('train', 'val') and not present:
        found.problems.append(note + ' (all of them; training needs some)')
      else:
        found.warnings.append(note + f', e.g. {missing[0]}')
    found.items[split] = [
        spec.Item(os.path.join(patient_dirs[p], f'{p} frame {f}'),
                  lambda p=p, f=f: load_volume(patient_dirs[p], f, num_classes=config.num_classes))
        for p in present for f in (1, 2)]
  extra = sorted(set(patient_dirs) - set(TRAIN_PATIENTS + VAL_PATIENTS + TEST_PATIENTS))
  if extra:
    found.warnings.append(f'{root}: {len(extra)} patient folders outside the SSL4MIS split (not '
                          f'used), e.g. {extra[0]}')
  return found


SPEC = spec.DatasetSpec(
    name='acdc_nifti', detect=is_acdc_layout, load=load,
    classes=spec.fixed_classes(CLASS_NAMES), check=check, hint='ACDC NIfTI folders patientXXX/')
