"""Builds a run's data from `--data-dir`: detects the layout and splits labeled and unlabeled data.

Layouts:
  ssl4mis_h5   ACDC as SSL4MIS ships it: `train_slices.list`, `val.list`, `data/slices/*.h5`.
  acdc_nifti   the original ACDC release: `patientXXX/patientXXX_frameYY[_gt].nii.gz`, `Info.cfg`.
  kits19       KiTS19 CT: `case_XXXXX/imaging.nii.gz` and `segmentation.nii.gz` (kits19.py).
  crag         CRAG histology: `train|valid/Images/*.png` with `Annotation/*.png` (crag.py).
  msd          a Medical Segmentation Decathlon task (Hippocampus): `dataset.json`, `imagesTr/`,
               `labelsTr/` (msd.py).
  mmwhs        MM-WHS cardiac CT: `[ct_train/]ct_train_10XX_{image,label}.nii.gz` (mmwhs.py).
  la           left atrium in the UA-MT layout: `train.list`, `2018LA_Seg_Training Set/<ID>/
               mri_norm2.h5` (la.py; 3D).
  pancreas     NIH Pancreas-CT: `image/PANCREAS_XXXX.nii.gz`, `label/labelXXXX.nii.gz`
               (pancreas.py; 3D).
  synthetic    the built-in cardiac phantom, used when no directory is given; for 3D runs
               (`data.crop_shape` set) the 3D phantom of synthetic3d.py.
The labeled subset is the first `labeled_num` patients in the SSL4MIS training order; for ACDC
3/7/14 patients give exactly SSL4MIS's 68/136/256 slices.
"""

from __future__ import annotations

import os

import ml_collections

from jaxseg.data import crag, kits19, la, mmwhs, msd, pancreas, readers, synthetic, synthetic3d
from jaxseg.data.sources import (H5SliceSource, LazyVolumes, SegmentationData, VolumeSliceSource,
                                 h5_volume_loader)
from jaxseg.errors import DataError


def detect_layout(data_dir: str) -> str:
  if not data_dir:
    return 'synthetic'
  if not os.path.isdir(data_dir):
    raise DataError(f'{data_dir}: data directory does not exist')
  if os.path.exists(os.path.join(data_dir, 'train_slices.list')):
    return 'ssl4mis_h5'
  if readers.is_acdc_nifti_layout(data_dir):
    return 'acdc_nifti'
  if kits19.is_kits19_layout(data_dir):
    return 'kits19'
  if crag.is_crag_layout(data_dir):
    return 'crag'
  if msd.is_msd_layout(data_dir):
    return 'msd'
  if mmwhs.is_mmwhs_layout(data_dir):
    return 'mmwhs'
  if la.is_la_layout(data_dir):
    return 'la'
  if pancreas.is_pancreas_layout(data_dir):
    return 'pancreas'
  raise DataError(f'{data_dir}: unknown data layout (expected the SSL4MIS ACDC layout with '
                  'train_slices.list, ACDC NIfTI folders patientXXX/, KiTS19 '
                  'case_XXXXX/imaging.nii.gz, CRAG train/Images/*.png, an MSD task with '
                  'dataset.json and imagesTr/, MM-WHS ct_train_XXXX_image.nii.gz, LA '
                  'train.list with 2018LA_Seg_Training Set/, or Pancreas '
                  'image/PANCREAS_XXXX.nii.gz)')


def load_data(config: ml_collections.ConfigDict) -> SegmentationData:
  layout = detect_layout(config.data.dir)
  if layout == 'synthetic':
    if config.data.get('crop_shape', ()):
      return synthetic3d.load_synthetic3d(config)
    return _synthetic(config)
  if layout == 'la':
    return la.load_la(config)
  if layout == 'pancreas':
    return pancreas.load_pancreas(config)
  if layout == 'ssl4mis_h5':
    return _ssl4mis_h5(config)
  if layout == 'kits19':
    return kits19.load_kits19(config)
  if layout == 'crag':
    return crag.load_crag(config)
  if layout == 'msd':
    return msd.load_msd(config)
  if layout == 'mmwhs':
    return mmwhs.load_mmwhs(config)
  return _acdc_nifti(config)


def first_patients(names: list[str], num_patients: int) -> int:
  """How many leading names belong to the first `num_patients` distinct patients."""
  seen = []
  for i, name in enumerate(names):
    patient = name.split('_')[0]
    if patient not in seen:
      if len(seen) == num_patients:
        return i
      seen.append(patient)
  return len(names)


def _read_list(path: str) -> list[str]:
  if not os.path.exists(path):
    raise DataError(f'{path}: list file is missing')
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise DataError(f'{path}: list file is empty')
  return [n[:-3] if n.endswith('.h5') else n for n in names]


def _check_labeled_num(labeled_num: int, num_patients: int, what: str) -> None:
  if not 0 < labeled_num <= num_patients:
    raise DataError(f'{what}: --labeled-num {labeled_num} must be between 1 and {num_patients}')


def _ssl4mis_h5(config) -> SegmentationData:
  root = config.data.dir
  slices = _read_list(os.path.join(root, 'train_slices.list'))
  paths = [os.path.join(root, 'data', 'slices', f'{name}.h5') for name in slices]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise DataError(f'{missing[0]}: listed in train_slices.list but missing '
                    f'({len(missing)} listed slice files missing in all)')
  num_patients = len({n.split('_')[0] for n in slices})
  _check_labeled_num(config.data.labeled_num, num_patients, os.path.join(root, 'train_slices.list'))
  n_labeled = first_patients(slices, config.data.labeled_num)
  load = h5_volume_loader(root, config.num_classes)
  splits = {}
  for split in ('val', 'test'):
    list_path = os.path.join(root, f'{split}.list')
    if os.path.exists(list_path):
      names = _read_list(list_path)
      for name in names:
        path = os.path.join(root, 'data', f'{name}.h5')
        if not os.path.exists(path):
          raise DataError(f'{path}: listed in {split}.list but missing')
      splits[split] = LazyVolumes(names, load)
  if 'val' not in splits:
    raise DataError(f'{os.path.join(root, "val.list")}: list file is missing')
  return SegmentationData(
      layout='ssl4mis_h5',
      labeled=H5SliceSource(paths[:n_labeled], config.num_classes, with_label=True),
      unlabeled=H5SliceSource(paths[n_labeled:], config.num_classes, with_label=False),
      splits=splits,
      description=(f'ACDC (SSL4MIS h5) at {root}: {n_labeled} labeled slices of '
                   f'{config.data.labeled_num} patients, {len(paths) - n_labeled} unlabeled, '
                   f'{len(splits["val"])} validation volumes'))


def _acdc_nifti(config) -> SegmentationData:
  root = config.data.dir
  patient_dirs = readers.find_acdc_patient_dirs(root)
  train = [p for p in readers.TRAIN_PATIENTS if p in patient_dirs]
  if not train:
    raise DataError(f'{root}: no SSL4MIS training patients found in the ACDC NIfTI layout')
  _check_labeled_num(config.data.labeled_num, len(train), root)

  def volumes(patients):
    return [readers.load_acdc_nifti_volume(patient_dirs[p], frame, num_classes=config.num_classes)
            for p in patients for frame in (1, 2)]

  labeled = volumes(train[:config.data.labeled_num])
  unlabeled = volumes(train[config.data.labeled_num:])
  splits = {}
  for split, patients in (('val', readers.VAL_PATIENTS), ('test', readers.TEST_PATIENTS)):
    present = [p for p in patients if p in patient_dirs]
    if present:
      splits[split] = volumes(present)
  if 'val' not in splits:
    raise DataError(f'{root}: none of the SSL4MIS validation patients '
                    f'({", ".join(readers.VAL_PATIENTS[:3])}, ...) found')
  return SegmentationData(
      layout='acdc_nifti',
      labeled=VolumeSliceSource(labeled, with_label=True),
      unlabeled=VolumeSliceSource(unlabeled, with_label=False),
      splits=splits,
      description=(f'ACDC (NIfTI) at {root}: {config.data.labeled_num} labeled patients, '
                   f'{len(train) - config.data.labeled_num} unlabeled, '
                   f'{len(splits["val"])} validation volumes'))


def _synthetic(config) -> SegmentationData:
  s = config.data.synthetic
  data = synthetic.make_dataset(seed=config.seed, num_train=s.num_train, num_val=s.num_val,
                                num_test=s.num_test, num_slices=s.num_slices, size=s.size)
  _check_labeled_num(config.data.labeled_num, s.num_train, 'synthetic phantom')
  n = config.data.labeled_num
  return SegmentationData(
      layout='synthetic',
      labeled=VolumeSliceSource(data['train'][:n], with_label=True),
      unlabeled=VolumeSliceSource(data['train'][n:], with_label=False),
      splits={'val': data['val'], 'test': data['test']},
      description=(f'synthetic cardiac phantom: {n} labeled volumes, {s.num_train - n} unlabeled, '
                   f'{s.num_val} validation volumes ({s.num_slices} slices of {s.size}x{s.size})'))
