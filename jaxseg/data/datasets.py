"""The table of datasets: one `DatasetSpec` per layout, used by loading, `data.check` and predict.

Each layout is one module exporting `SPEC` (spec.py says what a spec holds):
  ssl4mis_h5   ACDC as SSL4MIS ships it: `train_slices.list`, `val.list`, `data/slices/*.h5`.
  acdc_nifti   the original ACDC release: `patientXXX/patientXXX_frameYY[_gt].nii.gz` (acdc.py).
  kits19       KiTS19 CT: `case_XXXXX/imaging.nii.gz` and `segmentation.nii.gz`.
  crag         CRAG histology: `train|valid/Images/*.png` with `Annotation/*.png`.
  nnunet       users' own data in the nnU-Net raw layout: `dataset.json` with "channel_names",
               `imagesTr/{case}_0000.nii.gz`, `labelsTr/{case}.nii.gz`; 2D or 3D.
  msd          a Medical Segmentation Decathlon task (Hippocampus): `dataset.json`, `imagesTr/`.
  mmwhs        MM-WHS cardiac CT: `[ct_train/]ct_train_10XX_{image,label}.nii.gz`.
  la           left atrium in the UA-MT layout: `train.list`, `2018LA_Seg_Training Set/` (3D).
  pancreas     NIH Pancreas-CT: `image/PANCREAS_XXXX.nii.gz`, `label/labelXXXX.nii.gz` (3D).
  synthetic    the built-in cardiac phantom, used when no directory is given; with
  synthetic3d  `data.crop_shape` set (a 3D run), the 3D phantom.
The order is the order of detection: the first layout whose `detect` accepts the folder wins
(nnU-Net's dataset.json before MSD's, whose detection would accept both).

A dataset's options live in its config block, `config.data.<name>` (e.g. `data.kits19.window`),
with defaults in its module. `base_config()` holds every block so that experiments and `--set`
can name them; `resolve_config` keeps the block of the dataset a run trains on, drops the
others, and adopts the dataset's classes, so a run's config.json holds its own dataset only.
"""

from __future__ import annotations

import os

import ml_collections

from jaxseg.data import (acdc, crag, kits19, la, mmwhs, msd, nnunet, pancreas, ssl4mis, synthetic,
                         synthetic3d)
from jaxseg.data.sources import SegmentationData
from jaxseg.data.spec import DatasetSpec
from jaxseg.errors import DataError

DATASETS: tuple[DatasetSpec, ...] = (
    ssl4mis.SPEC, acdc.SPEC, kits19.SPEC, crag.SPEC, nnunet.SPEC, msd.SPEC, mmwhs.SPEC, la.SPEC,
    pancreas.SPEC, synthetic.SPEC, synthetic3d.SPEC)
BY_NAME: dict[str, DatasetSpec] = {s.name: s for s in DATASETS}

# Flat keys of run configs written before the datasets had blocks, and where they live now.
OLD_KEYS = {
    'kits_window': ('kits19', 'window'),
    'kits_train_size': ('kits19', 'train_size'),
    'crag_channels': ('crag', 'channels'),
    'msd_train_size': ('msd', 'train_size'),
    'mmwhs_train_size': ('mmwhs', 'train_size'),
    'pancreas_window': ('pancreas', 'window'),
    'pancreas_margin': ('pancreas', 'margin'),
}


def detect(data_dir: str, crop_shape=()) -> DatasetSpec:
  """The spec of the data in `data_dir`; the phantom (2D, or 3D with a crop shape) when empty."""
  if not data_dir:
    return synthetic3d.SPEC if crop_shape else synthetic.SPEC
  if not os.path.isdir(data_dir):
    raise DataError(f'{data_dir}: data directory does not exist')
  for spec in DATASETS:
    if spec.detect is not None and spec.detect(data_dir):
      return spec
  known = ', '.join(s.hint for s in DATASETS if s.hint)
  raise DataError(f'{data_dir}: unknown data layout (expected {known})')


def detect_layout(data_dir: str) -> str:
  """The layout name of `data_dir` ('synthetic' when empty)."""
  return detect(data_dir).name


def find(config: ml_collections.ConfigDict) -> DatasetSpec:
  """The spec of the data a config trains on."""
  return detect(config.data.dir, config.data.get('crop_shape', ()))


def load_data(config: ml_collections.ConfigDict) -> SegmentationData:
  return find(config).load(config)


def default_blocks() -> dict[str, dict]:
  """Every dataset's config block with its defaults, by dataset name (for `base_config`)."""
  return {s.name: dict(s.config) for s in DATASETS if s.config}


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` for the dataset it trains on: that dataset's block (defaults, with the values the
  config set), no block of any other dataset, and the dataset's classes. A new config."""
  spec = find(config)
  config = ml_collections.ConfigDict(config.to_dict())
  names = spec.classes(config)
  with config.unlocked():
    for other in DATASETS:
      if other.name != spec.name and other.name in config.data:
        del config.data[other.name]
    if spec.config:
      config.data[spec.name] = ml_collections.ConfigDict(dict(spec.block(config)))
    config.num_classes = len(names)
    config.class_names = tuple(names[1:])
  return config


def upgrade_old_keys(data: ml_collections.ConfigDict) -> None:
  """Moves the flat dataset keys of an old run's `data` (`kits_window`...) into their blocks."""
  for old, (name, key) in OLD_KEYS.items():
    if old in data:
      value = data[old]
      del data[old]
      if name not in data:
        data[name] = ml_collections.ConfigDict()
      data[name][key] = value
