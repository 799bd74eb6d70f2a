"""CRAG (colorectal adenocarcinoma gland, H&E histology) as PNG images and instance masks.

Official layout (Graham et al., MILD-Net, MedIA 2019): `train/Images/*.png` with
`train/Annotation/*.png` (173 images) and `valid/Images/*.png` with `valid/Annotation/*.png`
(40 images); a mask has the same file name as its image and holds an instance map (0
background, each gland its own integer), binarized here to gland = 1.

PLGCL (section 4.1) describes CRAG as "213 H&E images" split "80-10-10 training, test, and
validation" following [43]: the two official folders are pooled and split by `split_images`
(21 validation, 21 test, 171 training images; the lists are not published, so the split is a
seeded permutation). Each image becomes a one-slice Volume (D = 1), so the 2D pipeline and
slice-wise evaluation apply unchanged. Intensities are the 8-bit values divided by 255 (a fixed
scale, not per-image min-max, so stain intensity stays comparable between images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxseg.data import readers, spec, splits
from jaxseg.data.sources import SegmentationData
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError, DataError

NUM_CLASSES = 2
CLASS_NAMES = ('gland',)
SUBSETS = ('train', 'valid')
# The paper's 80/10/10 split of the pooled images (section 4.1).
PAPER_SPLIT = {'train': 80, 'val': 10, 'test': 10}
# ITU-R BT.601 luma weights for R, G, B.
BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _image_paths(root: str) -> dict[str, str]:
  """Image name (file stem) -> path of every PNG in root/{train,valid}/Images."""
  found: dict[str, str] = {}
  for subset in SUBSETS:
    folder = os.path.join(root, subset, 'Images')
    try:
      names = sorted(os.listdir(folder))
    except OSError:
      continue
    for name in names:
      if not name.lower().endswith('.png'):
        continue
      stem = name[:-4]
      path = os.path.join(folder, name)
      if stem in found:
        raise DataError(f'{path}: image name {stem!r} also in {found[stem]}; names must be '
                        'unique across train/ and valid/')
      found[stem] = path
  return found


def mask_path(image_path: str) -> str:
  """`<subset>/Annotation/<name>.png` for `<subset>/Images/<name>.png`."""
  images_dir, name = os.path.split(image_path)
  return os.path.join(os.path.dirname(images_dir), 'Annotation', name)


def is_crag_layout(root: str | os.PathLike) -> bool:
  """Whether root has `train/Images` or `valid/Images` with a PNG in it. Never raises."""
  root = os.fspath(root)
  for subset in SUBSETS:
    folder = os.path.join(root, subset, 'Images')
    try:
      if any(n.lower().endswith('.png') for n in os.listdir(folder)):
        return True
    except OSError:
      continue
  return False


def find_images(root: str | os.PathLike) -> dict[str, str]:
  """Sorted image name -> image path, over train/ and valid/.

  Raises:
    DataError: root missing, no images, or a name in both subsets.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f'{root}: folder not found')
  found = _image_paths(root)
  if not found:
    raise DataError(f'{root}: no CRAG images (train/Images/*.png, valid/Images/*.png) found')
  return dict(sorted(found.items()))


def read_png(path: str) -> np.ndarray:
  """A PNG as stored (uint8/uint16, (H, W) or (H, W, C)); palette images expanded to RGB.

  Raises:
    DataError: missing, corrupt or truncated file.
  """
  # Pillow ships with matplotlib, a dependency; imported here so other layouts do not need it.
  from PIL import Image

  readers.check_file(path)
  try:
    with Image.open(path) as img:
      img.load()  # decoding is lazy, so a truncated file only fails here
      if img.mode in ('P', 'PA'):
        img = img.convert('RGBA' if img.mode == 'PA' else 'RGB')
      array = np.asarray(img)
  except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
    raise DataError(f'{path}: not a readable PNG image (corrupt or truncated?): '
                    f'{readers.one_line(e)}') from e
  if array.ndim not in (2, 3) or array.size == 0:
    raise DataError(f'{path}: expected a 2D image, got shape {array.shape}')
  return array


def _to_unit(path: str, array: np.ndarray) -> np.ndarray:
  """Integer pixels divided by their type's maximum, as float64 in [0, 1]."""
  if array.dtype == np.bool_:
    return array.astype(np.float64)
  if not np.issubdtype(array.dtype, np.unsignedinteger):
    raise DataError(f'{path}: expected 8- or 16-bit pixels, got dtype {array.dtype}')
  return array.astype(np.float64) / np.iinfo(array.dtype).max


def to_rgb(path: str, array: np.ndarray) -> np.ndarray:
  """(H, W, 3) float in [0, 1]: alpha dropped, gray replicated."""
  x = _to_unit(path, array)
  if x.ndim == 2:
    return np.repeat(x[..., None], 3, axis=-1)
  channels = x.shape[-1]
  if channels in (1, 2):  # gray, gray + alpha
    return np.repeat(x[..., :1], 3, axis=-1)
  if channels in (3, 4):  # RGB, RGBA
    return x[..., :3]
  raise DataError(f'{path}: expected 1 to 4 channels, got shape {array.shape}')


def to_gray(rgb: np.ndarray) -> np.ndarray:
  """ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B of an (..., 3) array, as float32."""
  return (np.asarray(rgb, dtype=np.float64) @ BT601).astype(np.float32)


def binarize_mask(path: str, mask: np.ndarray) -> np.ndarray:
  """Instance map (0 background, k > 0 gland k) -> uint8 {0, 1}."""
  if mask.ndim == 3:
    # A colour-coded instance map: a gland is any non-black pixel (alpha ignored).
    if mask.shape[-1] in (2, 4):
      mask = mask[..., :-1]
    return np.any(mask != 0, axis=-1).astype(np.uint8)
  if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
    raise DataError(f'{path}: mask has non-integer dtype {mask.dtype}')
  return (mask != 0).astype(np.uint8)


def load_image(image_path: str | os.PathLike, *, channels: int = 1,
               require_label: bool = True) -> Volume:
  """One CRAG image and its mask as a one-slice Volume.

  Args:
    image_path: `<subset>/Images/<name>.png`; the mask is `<subset>/Annotation/<name>.png`.
    channels: 1 for BT.601 luma, image (1, H, W), what the model and transforms take today;
      3 for RGB, image (1, H, W, 3). The U-Net's first convolution follows (Flax infers input
      channels), but the 2D transforms and evaluation expect (H, W) slices, so 3 is kept for
      later work and is not usable for training yet.
    require_label: if False, a missing mask gives `label=None`.

  Raises:
    DataError: missing mask, unreadable PNG, mask shape differs from the image.
  """
  if channels not in (1, 3):
    raise ConfigError(f'data.crag.channels: must be 1 or 3, got {channels}')
  image_path = os.fspath(image_path)
  rgb = to_rgb(image_path, read_png(image_path))
  image = to_gray(rgb) if channels == 1 else rgb.astype(np.float32)
  m_path = mask_path(image_path)
  label = None
  if require_label or os.path.exists(m_path):
    if not os.path.exists(m_path):
      raise DataError(f'{m_path}: annotation mask missing for image {image_path}')
    mask = read_png(m_path)
    if mask.shape[:2] != rgb.shape[:2]:
      raise DataError(f'{m_path}: mask shape {mask.shape[:2]} differs from image shape '
                      f'{rgb.shape[:2]} of {os.path.basename(image_path)}')
    label = binarize_mask(m_path, mask)[None]
  name = os.path.basename(image_path)[:-4]
  # 0.55 um/pixel at 20x (PLGCL section 4.1); spacing in mm, D = 1 has no thickness: use 1.
  return Volume(name=name, image=np.ascontiguousarray(image[None]), label=label,
                spacing=(1.0, 0.55e-3, 0.55e-3), affine=None, path=image_path)


def split_images(names: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
  """The paper's 80/10/10 split of the pooled images, as a seeded permutation of sorted names.

  `np.random.default_rng(seed).permutation` of the sorted names; val and test are 10% each
  (rounded half up, at least 1), training the rest: 213 images give 171/21/21. The training
  list keeps the permuted order, so its first images (the labeled ones) are a random subset.

  Raises:
    DataError: fewer than 3 images, or a name given twice.
  """
  return splits.seeded_split(names, PAPER_SPLIT, seed, 'CRAG split')


def load(config: ml_collections.ConfigDict) -> SegmentationData:
  """CRAG as SegmentationData: training images in memory, val/test read on access.

  Config: `data.dir`; `data.labeled_fraction` (0.1 or 0.2 in the paper; if absent or 0,
  `data.labeled_num` images); `data.split_seed` (default 0) and `data.crag.channels` (default
  1; see `load_image`).
  """
  splits.check_num_classes(config, NUM_CLASSES, 'CRAG')
  root = config.data.dir
  paths, split, load_one = _split(root, config)
  n_labeled = splits.num_labeled(config, len(split['train']), root)
  return spec.assemble(
      'crag', [load_one(n) for n in split['train']], n_labeled, spec.lazy_splits(split, load_one),
      f'CRAG at {root}: {n_labeled} labeled images, {len(split["train"]) - n_labeled} '
      f'unlabeled, {len(split["val"])} validation, {len(split["test"])} test')


def _split(root: str, config):
  """(image paths, the split of their names, `name -> Volume`)."""
  paths = find_images(root)
  split = split_images(list(paths), seed=int(config.data.get('split_seed', 0)))
  channels = int(SPEC.block(config)['channels'])
  return paths, split, lambda name: load_image(paths[name], channels=channels)


def check(root: str, config) -> spec.Findings:
  """Every image of the split with its mask."""
  paths, split, load_one = _split(root, config)
  return spec.Findings({name: [spec.Item(paths[n], lambda n=n: load_one(n)) for n in names]
                        for name, names in split.items()})


SPEC = spec.DatasetSpec(
    name='crag', detect=is_crag_layout, load=load, classes=spec.fixed_classes(CLASS_NAMES),
    config={'channels': 1}, check=check, axes=spec.stored_order, normalize=spec.minmax,
    hint='CRAG train/Images/*.png')
