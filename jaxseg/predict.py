"""Segments new images with a trained run: `python -m jaxseg.predict --workdir RUN --input IN --output DIR`.

Reads NIfTI (.nii, .nii.gz) and SSL4MIS / UA-MT h5 files (dataset `image`), predicts each
volume as the run's evaluation does (`jaxseg.evaluation.inference.predict`: 2D slice by slice,
or 3D sliding window) and writes `<name>_pred.nii.gz` label maps (uint8, int16 beyond 255
classes), optionally `<name>_prob.nii.gz` class probabilities (float32, classes on the 4th axis).

Geometry: a NIfTI prediction has the input's array shape and axis order, affine and header (data
type and scaling reset), so it overlays the input exactly in ITK-SNAP or 3D Slicer. The network
sees the array rearranged to jaxseg's (D, H, W) and normalized the way the run's data loader does
it (the dataset's `axes` and `normalize` in jaxseg/data/datasets.py); the prediction is put back
in the file's order before it is written.
h5 files carry no geometry: `image` is taken as stored, (D, H, W) for SSL4MIS ACDC volumes, and
the prediction is written in that same array order with an identity affine, beside the image
itself as `<name>_image.nii.gz` so that the two overlay in a viewer.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import sys

import numpy as np

import nibabel as nib
import tqdm

from jaxseg import cli
from jaxseg.data import datasets, readers
from jaxseg.data.spec import DatasetSpec
from jaxseg.errors import DataError, JaxsegError
from jaxseg.evaluation import inference
from jaxseg.training import distributed, runs

INPUT_EXTS = ('.nii.gz', '.nii', '.h5')


# A run whose data folder is not here reads NIfTI as the phantom and ACDC do: (Z, Y, X), min-max.
DEFAULT_LAYOUT = 'synthetic'


# --- the run ---------------------------------------------------------------------------------


def run_dataset(config, layout: str = '') -> DatasetSpec:
  """The dataset whose conventions read the inputs: `layout` when given, else the one the run
  trained on, or the default when that folder is not here."""
  if layout:
    return datasets.BY_NAME[layout]
  try:
    return datasets.find(config)
  except DataError:
    return datasets.BY_NAME[DEFAULT_LAYOUT]


# --- files --------------------------------------------------------------------------------


@dataclasses.dataclass
class Input:
  """A volume to predict: the network's (D, H, W) view and how to write results back."""

  path: str
  image_DHW: np.ndarray
  axes: tuple[int, ...]  # stored array -> (D, H, W); the output is transposed back
  stored_shape: tuple[int, ...]
  affine: np.ndarray
  header: object | None  # the NIfTI header to copy; None for h5 (identity affine)


def stem(path: str) -> str:
  name = os.path.basename(path)
  for ext in INPUT_EXTS:
    if name.endswith(ext):
      return name[:-len(ext)]
  return os.path.splitext(name)[0]


def _to_3d(path: str, data: np.ndarray) -> np.ndarray:
  """3D array; a 2D image is one slice, trailing singleton axes (4D NIfTI of one frame) dropped."""
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim == 2:
    data = data[..., None]
  if data.ndim != 3:
    raise DataError(f'{path}: expected a 2D or 3D image, got shape {data.shape}')
  return data


def read_input(path: str, dataset: DatasetSpec, config) -> Input:
  """Reads a NIfTI or h5 file into the network's (D, H, W) view, normalized as in training
  (the dataset's `axes` and `normalize`)."""
  if path.endswith('.h5'):
    # SSL4MIS/UA-MT h5 images are stored already normalized, exactly as training reads them.
    image, _ = readers.read_h5(path, num_classes=256, require_label=False)
    stored_shape = image.shape
    image = _to_3d(path, image)
    if len(stored_shape) == 2:  # a 2D slice: one slice of (1, H, W)
      image = image.transpose(2, 0, 1)
      axes = (2, 0, 1)
    else:
      axes = (0, 1, 2)
    return Input(path, np.ascontiguousarray(image), axes, stored_shape, np.eye(4), None)
  data, affine, zooms = readers.read_nifti(path)
  header = nib.load(path).header
  stored_shape = data.shape
  data = _to_3d(path, data)
  if np.ptp(data) == 0:
    raise DataError(f'{path}: image is constant ({data.flat[0]}), nothing to segment')
  axes = dataset.axes(zooms)
  image = dataset.normalize(data, config).transpose(axes)
  return Input(path, np.ascontiguousarray(image), axes, stored_shape, affine, header)


def _back_to_stored(array_DHW: np.ndarray, item: Input) -> np.ndarray:
  """The (D, H, W[, K]) result in the input file's own axis order and shape."""
  extra = array_DHW.shape[3:]
  inverse = tuple(np.argsort(item.axes)) + tuple(range(3, array_DHW.ndim))
  return array_DHW.transpose(inverse).reshape(tuple(item.stored_shape) + extra)


def _nifti(array: np.ndarray, item: Input, dtype) -> object:
  if item.header is None:
    return nib.Nifti1Image(array.astype(dtype), item.affine)
  header = item.header.copy()
  header.set_data_dtype(dtype)
  # The input's scaling (e.g. CT slope/intercept) must not be applied to class indices.
  header.set_slope_inter(1.0, 0.0)
  image = nib.Nifti1Image(array.astype(dtype), item.affine, header)
  image.header['cal_min'], image.header['cal_max'] = float(array.min()), float(array.max())
  return image


def output_paths(path: str, input_root: str, output_dir: str) -> dict[str, str]:
  """`<output>/<subfolders of input_root>/<stem>_{pred,prob,image}.nii.gz` for one input file."""
  rel = os.path.relpath(os.path.dirname(os.path.abspath(path)), os.path.abspath(input_root))
  folder = os.path.normpath(os.path.join(output_dir, rel if rel != '.' else ''))
  name = stem(path)
  return {kind: os.path.join(folder, f'{name}_{kind}.nii.gz') for kind in ('pred', 'prob', 'image')}


def predict_file(run: runs.RestoredRun, path: str, paths: dict[str, str], *, dataset: DatasetSpec,
                 probabilities: bool = False, overwrite: bool = False) -> list[str]:
  """Predicts one file and writes its NIfTI outputs; returns the paths written."""
  wanted = ['pred'] + (['prob'] if probabilities else [])
  wanted += ['image'] if path.endswith('.h5') else []
  if not overwrite:
    for kind in wanted:
      if os.path.exists(paths[kind]):
        raise DataError(f'{paths[kind]}: already exists; pass --overwrite to replace it '
                        f'(nothing written for {path})')
  item = read_input(path, dataset, run.config)
  labels = inference.predict(run.logits_fn, item.image_DHW, run.config)
  dtype = np.uint8 if run.config.num_classes <= 256 else np.int16
  outputs = {'pred': _nifti(_back_to_stored(labels, item), item, dtype)}
  if probabilities:
    probs = inference.predict(run.logits_fn, item.image_DHW, run.config, probabilities=True)
    probs = _back_to_stored(probs, item)
    if probs.ndim == 3:  # a 2D input: classes on the 4th axis all the same
      probs = probs[:, :, None]
    outputs['prob'] = _nifti(probs, item, np.float32)
  if item.header is None:
    image = _back_to_stored(item.image_DHW, item)
    outputs['image'] = nib.Nifti1Image(image.astype(np.float32), item.affine)
  os.makedirs(os.path.dirname(paths['pred']), exist_ok=True)
  for kind, image in outputs.items():
    nib.save(image, paths[kind])
  return [paths[kind] for kind in outputs]


def find_inputs(input_path: str, pattern: str = '*', exclude: str = '') -> list[str]:
  """The file itself, or every NIfTI/h5 file under the folder matching `pattern`, sorted."""
  if not os.path.exists(input_path):
    raise DataError(f'{input_path}: input not found')
  if os.path.isfile(input_path):
    return [input_path]
  exclude = os.path.abspath(exclude) + os.sep if exclude else ''
  found = []
  for folder, dirs, names in os.walk(input_path):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(folder, name)
      if (name.endswith(INPUT_EXTS) and fnmatch.fnmatch(name, pattern)
          and not (exclude and os.path.abspath(path).startswith(exclude))):
        found.append(path)
  if not found:
    raise DataError(f'{input_path}: no {", ".join(INPUT_EXTS)} files matching {pattern!r}')
  return found


# --- command line -------------------------------------------------------------------------


def parse_args(argv):
  parser = cli.parser('jaxseg.predict', __doc__, run_dir=True)
  parser.add_argument('--input', required=True, help='a .nii/.nii.gz/.h5 file or a folder of them')
  parser.add_argument('--output', required=True, help='folder for the predictions')
  parser.add_argument('--checkpoint', default='best', help='best (default), last, or a step')
  parser.add_argument('--probabilities', action='store_true',
                      help='also write per-class probabilities, <name>_prob.nii.gz')
  parser.add_argument('--glob', default='*', help="file names to take from a folder, e.g. "
                      "'*frame??.nii.gz' (default: every .nii, .nii.gz and .h5)")
  parser.add_argument('--layout', choices=sorted(datasets.BY_NAME),
                      help="NIfTI axis order and intensity normalization of this dataset layout "
                           "(default: the run's own data layout)")
  parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
  return parser.parse_args(argv)


@cli.command
def main(argv: list[str]) -> int:
  args = parse_args(argv)
  runs.parse_checkpoint(args.checkpoint)  # a misspelt name fails before any file is read
  inputs = find_inputs(args.input, args.glob, exclude=args.output)
  run = runs.open_run(args.workdir, args.checkpoint)
  dataset = run_dataset(run.config, args.layout)
  print(f'{run.config.experiment}: checkpoint {args.checkpoint} (step {run.step}); '
        f'{len(inputs)} file(s); NIfTI read as {dataset.name} '
        f'({dataset.normalize.__name__.strip("_")})', flush=True)
  root = args.input if os.path.isdir(args.input) else os.path.dirname(args.input)
  failed = []
  bar = tqdm.tqdm(inputs, desc='predict', unit='file', disable=args.no_progress, dynamic_ncols=True)
  for path in bar:
    try:
      written = predict_file(run, path, output_paths(path, root, args.output),
                             dataset=dataset, probabilities=args.probabilities,
                             overwrite=args.overwrite)
      tqdm.tqdm.write(f'wrote {", ".join(written)}')
    except JaxsegError as e:  # one bad file does not stop the others
      failed.append(path)
      tqdm.tqdm.write(f'failed: {e}', file=sys.stderr)
  bar.close()
  if failed:
    raise DataError(f'{len(failed)} of {len(inputs)} files failed (named above); the other '
                    f'{len(inputs) - len(failed)} were written to {args.output}')
  return 0


if __name__ == '__main__':
  # Launched as several processes (SLURM, mpirun, a TPU pod): process 0 alone works.
  sys.exit(distributed.main_only(main))
