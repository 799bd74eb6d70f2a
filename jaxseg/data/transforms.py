"""Preprocessing and augmentation of 2D slices in NumPy, wrapped as Grain transforms.

Follows the SSL4MIS protocol for ACDC: slices are resized to a fixed square size; the weak
augmentation is SSL4MIS's `RandomGenerator` (rot90 + flip, or a small rotation) and the
student's strong view adds intensity-only perturbations on top of the weak view, so the weak
label stays valid for it.

Elements are dicts. A raw slice is `{'image': float32 (H, W) in [0, 1], 'label': int (H, W)}`;
`label` is absent for unlabeled data. Every transform returns a new dict of fixed-shape,
C-contiguous float32 (images) and int32 (labels) arrays and never modifies its input, because
Grain sources hand out the same objects on every epoch.

All randomness comes from the `np.random.Generator` passed in (Grain seeds it from the
pipeline seed and the element index), so a pipeline is reproducible for a given seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from scipy import ndimage

from jaxseg.data.volume import resize
from jaxseg.errors import ConfigError

STRONG_OPS: tuple[str, ...] = ('brightness', 'contrast', 'gamma', 'blur', 'noise', 'cutout')
"""Names accepted in `strong_ops`, in the default order of application."""

_CUTOUT_FILLS = ('zero', 'mean')


# ----------------------------------------------------------------------------------------------
# Geometry (image and label together).


def random_rot_flip(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
  """Rotates by k * 90 degrees (k in 0..3) and flips along a random axis, as SSL4MIS does."""
  k = int(rng.integers(0, 4))
  axis = int(rng.integers(0, 2))
  image = np.flip(np.rot90(image, k), axis=axis)
  if label is not None:
    label = np.flip(np.rot90(label, k), axis=axis)
  return image, label


def random_rotate(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    max_degrees: float = 20.0,
    image_order: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Rotates by an angle uniform in [-max_degrees, max_degrees], keeping the shape.

  The label always uses nearest-neighbour interpolation; corners exposed by the rotation are
  filled with 0 (black image, background label) in both.
  """
  angle = float(rng.uniform(-max_degrees, max_degrees))
  image = ndimage.rotate(image, angle, reshape=False, order=image_order, mode='constant', cval=0)
  if label is not None:
    label = ndimage.rotate(label, angle, reshape=False, order=0, mode='constant', cval=0)
  return image, label


def random_crop(
    image: np.ndarray, label: np.ndarray | None, crop_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
  """Crops a (crop_size, crop_size) window at a random position, zero-padding first if needed."""
  h, w = image.shape
  pad_h, pad_w = max(crop_size - h, 0), max(crop_size - w, 0)
  if pad_h or pad_w:
    # Pad symmetrically so the anatomy (usually centred) stays inside the crop.
    pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    image = np.pad(image, pads, mode='constant')
    if label is not None:
      label = np.pad(label, pads, mode='constant')
    h, w = image.shape
  top = int(rng.integers(0, h - crop_size + 1))
  left = int(rng.integers(0, w - crop_size + 1))
  window = (slice(top, top + crop_size), slice(left, left + crop_size))
  return image[window], (label[window] if label is not None else None)


def weak_augment(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    size: int,
    rotate_degrees: float = 20.0,
    crop_size: int | None = None,
    p_rot_flip: float = 0.5,
    p_rotate: float = 0.5,
    image_order: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
  """SSL4MIS's `RandomGenerator`, plus an optional random crop, then a resize to `size`.

  With probability `p_rot_flip` a rot90 + flip; otherwise, with probability `p_rotate`, a
  rotation within +-`rotate_degrees`; then, if `crop_size` is set, a random crop of that size
  at the slice's native resolution; finally a resize to (size, size). Image and label get the
  same geometric transform; the label is interpolated with nearest neighbour.

  Returns:
    (image float32 (size, size) clipped to [0, 1], label int32 (size, size) or None).
  """
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 2:
    raise ValueError(f'expected a 2D image, got shape {image.shape}')
  if label is not None:
    label = np.asarray(label)
    if label.shape != image.shape:
      raise ValueError(f'label shape {label.shape} differs from image shape {image.shape}')
  # Same decision structure as SSL4MIS (`if random() > 0.5 ... elif random() > 0.5`), so the
  # rotation branch fires with probability (1 - p_rot_flip) * p_rotate overall.
  if rng.random() < p_rot_flip:
    image, label = random_rot_flip(image, label, rng)
  elif rng.random() < p_rotate:
    image, label = random_rotate(image, label, rng, rotate_degrees, image_order)
  if crop_size is not None:
    image, label = random_crop(image, label, crop_size, rng)
  image = resize(np.ascontiguousarray(image), size, order=image_order)
  # Cubic splines overshoot; keep the documented [0, 1] range for the intensity ops downstream.
  image = np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)
  if label is not None:
    label = np.ascontiguousarray(resize(np.ascontiguousarray(label), size, order=0), dtype=np.int32)
  return image, label


# ----------------------------------------------------------------------------------------------
# Intensity (image only).


@dataclasses.dataclass(frozen=True)
class StrongConfig:
  """Strengths and probabilities of the strong (intensity-only) augmentation.

  Attributes:
    p: probability that each op is applied, independently of the others; a float for all ops
      or a mapping from op name to probability (ops not named use 0.8).
    brightness: additive shift drawn uniformly from [-brightness, brightness].
    contrast: factor drawn uniformly from [1 - contrast, 1 + contrast], applied about the mean.
    gamma: exponent drawn log-uniformly from [1 / (1 + gamma), 1 + gamma].
    blur_sigma: Gaussian blur sigma range in pixels, drawn uniformly.
    noise_std: standard deviation range of additive Gaussian noise, drawn uniformly.
    cutout_size: side range of the cutout rectangle as a fraction of the image side, drawn
      independently for height and width.
    cutout_fill: 'zero' or 'mean' (the image mean before the cutout).
  """

  p: float | Mapping[str, float] = 0.8
  brightness: float = 0.2
  contrast: float = 0.3
  gamma: float = 0.5
  blur_sigma: tuple[float, float] = (0.5, 1.5)
  noise_std: tuple[float, float] = (0.01, 0.05)
  cutout_size: tuple[float, float] = (0.1, 0.4)
  cutout_fill: str = 'zero'

  def __post_init__(self):
    if isinstance(self.p, Mapping):
      unknown = sorted(set(self.p) - set(STRONG_OPS))
      if unknown:
        raise ConfigError(
            f'strong augmentation probability : unknown op {unknown[0]!r}; known ops: '
            f'{", ".join(STRONG_OPS)}')
      probs = list(self.p.values())
    else:
      probs = [self.p]
    if any(not 0.0 <= q <= 1.0 for q in probs):
      raise ConfigError(f'strong augmentation p : must be in [0, 1], got {self.p}')
    for name in ('brightness', 'contrast', 'gamma'):
      if getattr(self, name) < 0:
        raise ConfigError(f'strong augmentation {name} : must be >= 0, got {getattr(self, name)}')
    if self.contrast > 1:
      raise ConfigError(f'strong augmentation contrast : must be <= 1, got {self.contrast}')
    for name in ('blur_sigma', 'noise_std', 'cutout_size'):
      lo, hi = getattr(self, name)
      if not 0 <= lo <= hi:
        raise ConfigError(f'strong augmentation {name} : need 0 <= low <= high, got {(lo, hi)}')
    if self.cutout_size[1] > 1:
      raise ConfigError(f'strong augmentation cutout_size : must be <= 1, got {self.cutout_size}')
    if self.cutout_fill not in _CUTOUT_FILLS:
      raise ConfigError(
          f'strong augmentation cutout_fill : unknown value {self.cutout_fill!r}; known: '
          f'{", ".join(_CUTOUT_FILLS)}')

  def prob(self, op: str) -> float:
    """Probability of applying `op`."""
    if isinstance(self.p, Mapping):
      return float(self.p.get(op, 0.8))
    return float(self.p)


def check_strong_ops(ops: tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """Returns `ops` as a tuple; raises ConfigError naming the first unknown op."""
  for op in ops:
    if op not in STRONG_OPS:
      raise ConfigError(
          f'strong augmentation op {op!r} : unknown; known ops: {", ".join(STRONG_OPS)}')
  return tuple(ops)


def _brightness(x: np.ndarray, rng: np.random.Generator, cfg: StrongConfig) -> np.ndarray:
  return x + np.float32(rng.uniform(-cfg.brightness, cfg.brightness))


def _contrast(x: np.ndarray, rng: np.random.Generator, cfg: StrongConfig) -> np.ndarray:
  factor = np.float32(rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast))
  mean = x.mean(dtype=np.float32)
  return (x - mean) * factor + mean


def _gamma(x: np.ndarray, rng: np.random.Generator, cfg: StrongConfig) -> np.ndarray:
  # Log-uniform so brightening and darkening are equally likely.
  half_range = np.log1p(cfg.gamma)
  g = np.float32(np.exp(rng.uniform(-half_range, half_range)))
  return np.power(x, g)


def _blur(x: np.ndarray, rng: np.random.Generator, cfg: StrongConfig) -> np.ndarray:
  sigma = float(rng.uniform(*cfg.blur_sigma))
  return ndimage.gaussian_filter(x, sigma=sigma, mode='reflect')


def _noise(x: np.ndarray, rng: np.random.Generator, cfg: StrongConfig) -> np.ndarray:
  std = float(rng.uniform(*cfg.noise_std))
  return x + rng.normal(0.0, std, size=x.shape).astype(np.float32)


def _cutout(x: np.ndarray, rng: np.random.Generator, cfg: StrongConfig) -> np.ndarray:
  h, w = x.shape
  ch = max(1, int(round(rng.uniform(*cfg.cutout_size) * h)))
  cw = max(1, int(round(rng.uniform(*cfg.cutout_size) * w)))
  top = int(rng.integers(0, h - ch + 1))
  left = int(rng.integers(0, w - cw + 1))
  fill = 0.0 if cfg.cutout_fill == 'zero' else float(x.mean())
  x = x.copy()
  x[top:top + ch, left:left + cw] = fill
  return x


_STRONG_FNS = {
    'brightness': _brightness,
    'contrast': _contrast,
    'gamma': _gamma,
    'blur': _blur,
    'noise': _noise,
    'cutout': _cutout,
}
assert tuple(_STRONG_FNS) == STRONG_OPS


def strong_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    ops: tuple[str, ...] = STRONG_OPS,
    config: StrongConfig | None = None,
) -> np.ndarray:
  """Applies intensity-only ops in the order given, each with its own probability.

  Args:
    image: float32 (H, W) in [0, 1]; not modified.
    rng: source of randomness.
    ops: op names from `STRONG_OPS`.
    config: strengths and probabilities; defaults to `StrongConfig()`.

  Returns:
    A new float32 (H, W) C-contiguous array in [0, 1].
  """
  ops = check_strong_ops(ops)
  cfg = config if config is not None else StrongConfig()
  x = np.array(image, dtype=np.float32, copy=True)
  for op in ops:
    if rng.random() < cfg.prob(op):
      # Clip after every op: gamma needs non-negative input and later ops assume [0, 1].
      x = np.clip(_STRONG_FNS[op](x, rng, cfg), 0.0, 1.0).astype(np.float32, copy=False)
  return np.ascontiguousarray(x)


# ----------------------------------------------------------------------------------------------
# Grain transforms.


def _check_size(name: str, value: int | None, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ConfigError(f'{name} : must be a positive integer, got {value!r}')


def _check_order(order: int) -> None:
  if order not in (0, 1, 2, 3, 4, 5):
    raise ConfigError(f'image_order : must be a spline order in 0..5, got {order!r}')


class Preprocess(grain.transforms.Map):
  """Resizes a slice to (size, size) without augmentation (validation-style pipelines).

  Output: `{'image': float32 (size, size), 'label': int32 (size, size)}`, label only if present.
  """

  def __init__(self, size: int, image_order: int = 1):
    _check_size('size', size)
    _check_order(image_order)
    self.size = int(size)
    self.image_order = image_order

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    image = np.asarray(element['image'], dtype=np.float32)
    out = {'image': np.ascontiguousarray(resize(image, self.size, self.image_order),
                                         dtype=np.float32)}
    if element.get('label') is not None:
      label = resize(np.asarray(element['label']), self.size, order=0)
      out['label'] = np.ascontiguousarray(label, dtype=np.int32)
    return out


class WeakAugment(grain.transforms.RandomMap):
  """SSL4MIS weak augmentation (see `weak_augment`) as a Grain RandomMap.

  Output: `{'image': float32 (size, size), 'label': int32 (size, size)}`, label only if present.
  """

  def __init__(
      self,
      size: int,
      rotate_degrees: float = 20.0,
      crop_size: int | None = None,
      p_rot_flip: float = 0.5,
      p_rotate: float = 0.5,
      image_order: int = 1,
  ):
    _check_size('size', size)
    _check_size('crop_size', crop_size, allow_none=True)
    _check_order(image_order)
    if rotate_degrees < 0:
      raise ConfigError(f'rotate_degrees : must be >= 0, got {rotate_degrees}')
    for name, p in (('p_rot_flip', p_rot_flip), ('p_rotate', p_rotate)):
      if not 0.0 <= p <= 1.0:
        raise ConfigError(f'{name} : must be in [0, 1], got {p}')
    self.size = int(size)
    self.rotate_degrees = float(rotate_degrees)
    self.crop_size = None if crop_size is None else int(crop_size)
    self.p_rot_flip = float(p_rot_flip)
    self.p_rotate = float(p_rotate)
    self.image_order = image_order

  def augment(
      self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Applies the weak augmentation to one (image, label) pair."""
    return weak_augment(
        image, label, rng, self.size, rotate_degrees=self.rotate_degrees,
        crop_size=self.crop_size, p_rot_flip=self.p_rot_flip, p_rotate=self.p_rotate,
        image_order=self.image_order)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = self.augment(element['image'], element.get('label'), rng)
    out = {'image': image}
    if label is not None:
      out['label'] = label
    return out


class TwoViews(grain.transforms.RandomMap):
  """Weak and strong views of one slice, for the unlabeled (consistency) stream.

  `image_strong` is `strong_augment(image_weak)`: intensity-only, so both views share the
  geometry and the weak view's label (or pseudo-label) applies to the strong one.

  Output: `{'image_weak': float32 (size, size), 'image_strong': float32 (size, size)}`, plus
  `'label': int32 (size, size)` (weak geometry) when `keep_label` is set and the input has one.
  """

  def __init__(
      self,
      size: int,
      weak: WeakAugment | None = None,
      strong_ops: tuple[str, ...] = STRONG_OPS,
      strong: StrongConfig | None = None,
      keep_label: bool = False,
      independent: bool = False,
  ):
    """Initializes the transform.

    Args:
      size: output side length, or the output (H, W) (evaluation resizes predictions back).
      weak: weak augmentation; defaults to `WeakAugment(size)`. Its size must equal `size`.
      strong_ops: op names from `STRONG_OPS`, applied in this order; () makes
        image_strong equal image_weak.
      strong: strengths and probabilities of the strong ops; defaults to `StrongConfig()`.
      keep_label: pass the (weakly transformed) label through when present. Off by default so
        the unlabeled stream has one key set even when some sources carry labels.
      independent: draw the second view's geometry independently (SimCLR's two augmentations
        of one image) instead of sharing the first view's; a label then fits neither view
        exactly, so it cannot be combined with `keep_label`.
    """
    _check_size('size', size)
    if weak is None:
      weak = WeakAugment(size)
    if weak.size != size:
      raise ConfigError(f'TwoViews : weak augmentation size {weak.size} differs from size {size}')
    self.size = int(size)
    self.weak = weak
    self.strong_ops = check_strong_ops(strong_ops)
    self.strong = strong if strong is not None else StrongConfig()
    self.keep_label = bool(keep_label)
    self.independent = bool(independent)
    if self.keep_label and self.independent:
      raise ConfigError('TwoViews : keep_label needs views that share their geometry '
                        '(independent=False)')

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    label = element.get('label') if self.keep_label else None
    image_weak, label = self.weak.augment(element['image'], label, rng)
    second = self.weak.augment(element['image'], None, rng)[0] if self.independent else image_weak
    out = {
        'image_weak': image_weak,
        'image_strong': strong_augment(second, rng, self.strong_ops, self.strong),
    }
    if label is not None:
      out['label'] = label
    return out


class LabeledTwin(grain.transforms.RandomMap):
  """A labeled slice and its intensity-only twin, for supervised local contrast.

  The weak (geometric) augmentation is applied once, then `image_twin = strong_augment(image)`
  with intensity ops only, so the label fits both views pixel for pixel (Hu et al. §2.2,
  Chaitanya et al.'s 'intensity-only augmented twin').

  Output: `{'image', 'image_twin': float32 (size, size), 'label': int32 (size, size)}`.
  """

  def __init__(self, weak: WeakAugment, strong_ops: tuple[str, ...] = ('brightness', 'contrast',
                                                                        'gamma', 'noise'),
               strong: StrongConfig | None = None):
    self.weak = weak
    self.strong_ops = check_strong_ops(strong_ops)
    if 'cutout' in self.strong_ops:
      # Cutout erases pixels, whose labels would then describe an image that is not there.
      raise ConfigError('LabeledTwin : cutout is not an intensity-only op; remove it from the '
                        'twin ops')
    self.strong = strong if strong is not None else StrongConfig()

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = self.weak.augment(element['image'], element['label'], rng)
    return {'image': image, 'image_twin': strong_augment(image, rng, self.strong_ops, self.strong),
            'label': label}
