"""Built-in synthetic cardiac cine-MRI phantom, the default dataset when no data directory is given.

Each volume is a stack of short-axis slices from the base (slice 0) to the apex, labelled as in
ACDC: 0 background, 1 RV, 2 MYO, 3 LV. Every subject draws its own anatomy (pathology-like group,
cardiac phase, chamber size and shape, wall thickness, position, orientation), its own surroundings
(chest wall, lungs, liver, stomach, aorta, spine, pericardial fat) and its own acquisition
(contrast, bias field, blur, noise level), so that a segmenter has to learn shape and context
rather than an intensity threshold. Labels are the exact geometric regions sampled at pixel
centres; only the image is blurred and corrupted. By construction every LV pixel's 4-neighbours
are LV or MYO, and at size >= 64 slices num_slices // 4 to num_slices // 2 hold all four classes;
toward the apex the RV disappears first, then the LV cavity, and the last slice may be empty.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxseg.data import spec, splits
from jaxseg.data.sources import SegmentationData
from jaxseg.data.volume import Volume
from jaxseg.errors import ConfigError

BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
CLASS_NAMES = ('background', 'RV', 'MYO', 'LV')

# In-plane spacing scales with _REF_SIZE / size and slice thickness with _REF_SLICES / num_slices,
# so the field of view (~190 mm) and the base-to-apex coverage stay the same at any resolution.
_REF_SIZE = 128
_REF_SLICES = 8

# (name, LV cavity radius mm, wall thickness mm, RV width mm, systolic contraction), loosely after
# the ACDC groups: normal, dilated CM, hypertrophic CM, previous infarction, abnormal RV.
_GROUPS = (
    ('NOR', (21.0, 26.0), (7.0, 10.0), (12.0, 18.0), (0.62, 0.75)),
    ('DCM', (28.0, 35.0), (5.0, 7.0), (12.0, 18.0), (0.85, 0.95)),
    ('HCM', (16.0, 21.0), (11.0, 16.0), (11.0, 16.0), (0.55, 0.70)),
    ('MINF', (24.0, 31.0), (6.5, 9.0), (12.0, 18.0), (0.80, 0.92)),
    ('ARV', (19.0, 24.0), (7.0, 9.5), (22.0, 30.0), (0.65, 0.80)),
)


def make_volume(seed: int, index: int, num_slices: int = 8, size: int = 128) -> Volume:
  """Generates one labelled phantom volume.

  Args:
    seed: dataset seed.
    index: subject index; (seed, index) fully determines the volume.
    num_slices: short-axis slices from base to apex.
    size: in-plane height and width in pixels.

  Returns:
    A `Volume` named `synth{index:03d}` with a float32 image in [0, 1] and a uint8 label.

  Raises:
    ConfigError: if `num_slices` or `size` is too small, or `seed`/`index` is negative.
  """
  if num_slices < 1:
    raise ConfigError(f'synthetic data : num_slices must be >= 1, got {num_slices}')
  if size < 32:
    raise ConfigError(f'synthetic data : size must be >= 32, got {size}')
  if seed < 0 or index < 0:
    raise ConfigError(f'synthetic data : seed and index must be >= 0, got {seed}, {index}')
  rng = np.random.default_rng([seed, index])
  sxy = round(float(rng.uniform(1.35, 1.65)) * _REF_SIZE / size, 4)
  sz = 10.0 * _REF_SLICES / num_slices
  image, label = _render(rng, num_slices, size, sxy)
  origin = np.array([0.0, -sxy * (size - 1) / 2, -sxy * (size - 1) / 2])
  origin += rng.uniform(-20.0, 20.0, size=3)
  affine = np.diag([sz, sxy, sxy, 1.0])
  affine[:3, 3] = origin
  return Volume(name=f'synth{index:03d}', image=image, label=label, spacing=(sz, sxy, sxy),
                affine=affine, path='')


def make_dataset(seed: int = 0, num_train: int = 40, num_val: int = 8, num_test: int = 8,
                 num_slices: int = 8, size: int = 128) -> dict[str, list[Volume]]:
  """Generates the train/val/test splits of the phantom.

  Subjects are numbered train first, then val, then test, so splits never share a volume.

  Args:
    seed: dataset seed.
    num_train: volumes in the training split.
    num_val: volumes in the validation split.
    num_test: volumes in the test split.
    num_slices: short-axis slices per volume.
    size: in-plane height and width in pixels.

  Returns:
    Dict with keys 'train', 'val', 'test' mapping to lists of `Volume`.

  Raises:
    ConfigError: if a split size is negative or a volume argument is invalid.
  """
  counts = {'train': num_train, 'val': num_val, 'test': num_test}
  for split, n in counts.items():
    if n < 0:
      raise ConfigError(f'synthetic data : num_{split} must be >= 0, got {n}')
  out: dict[str, list[Volume]] = {}
  start = 0
  for split, n in counts.items():
    out[split] = [make_volume(seed, i, num_slices, size) for i in range(start, start + n)]
    start += n
  return out


def _frame(u: np.ndarray, v: np.ndarray, cu, cv, angle: float) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates relative to (cu, cv), rotated so that direction `angle` becomes the +u axis."""
  du, dv = u - cu, v - cv
  c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
  return c * du + s * dv, c * dv - s * du


def _cos_shift(c: np.ndarray, s: np.ndarray, phase) -> np.ndarray:
  """cos(a - phase) from c = cos(a), s = sin(a); avoids per-pixel trigonometry."""
  return c * np.float32(np.cos(phase)) + s * np.float32(np.sin(phase))


def _wobble(rng: np.random.Generator, amp: float) -> tuple[float, float, float, float]:
  """Random 2nd/3rd harmonic boundary perturbation so that organs are not perfect ellipses."""
  return (rng.uniform(0, amp), rng.uniform(0, 2 * np.pi), rng.uniform(0, amp / 2),
          rng.uniform(0, 2 * np.pi))


def _ellipse(u, v, cu, cv, a, b, angle: float = 0.0, wobble=None) -> np.ndarray:
  """Boolean mask of a (possibly wobbly) ellipse with semi-axes a, b rotated by `angle`."""
  p, q = _frame(u, v, cu, cv, angle)
  p, q = p / a, q / b
  r2 = p * p + q * q
  if wobble is None:
    return r2 < 1.0
  a2, p2, a3, p3 = wobble
  r = np.sqrt(r2) + np.float32(1e-6)
  c, s = p / r, q / r
  c2, s2 = c * c - s * s, 2 * c * s
  c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
  thr = 1.0 + a2 * _cos_shift(c2, s2, p2) + a3 * _cos_shift(c3, s3, p3)
  return r2 < thr * thr


def _profile(tz: np.ndarray, base: float, apex: float, power: float) -> np.ndarray:
  """Base-to-apex scale of a structure: 1 at the base, tapering bullet-like to 0 at `apex`."""
  x = np.clip((tz - base) / (apex - base), 0.0, None)
  return (np.clip(1.0 - x ** power, 0.0, None) ** (1.0 / power)).astype(np.float32)


def _dilate4(m: np.ndarray) -> np.ndarray:
  """4-connected in-plane dilation of a (D, H, W) mask."""
  out = m.copy()
  out[:, 1:, :] |= m[:, :-1, :]
  out[:, :-1, :] |= m[:, 1:, :]
  out[:, :, 1:] |= m[:, :, :-1]
  out[:, :, :-1] |= m[:, :, 1:]
  return out


def _bump(c: np.ndarray, s: np.ndarray, center: float, width: float) -> np.ndarray:
  """Smooth periodic bump in angle (von Mises shape), 1 at `center`, ~width radians wide."""
  return np.exp((_cos_shift(c, s, center) - 1.0) / np.float32(width * width))


def _render(rng: np.random.Generator, depth: int, size: int,
            sxy: float) -> tuple[np.ndarray, np.ndarray]:
  """Draws one subject and renders its (image, label), both (depth, size, size)."""
  u01 = rng.uniform
  f32 = np.float32
  shape = (depth, size, size)
  # Slice position in [0, 1] from base to apex.
  tz = (np.arange(depth) / max(depth - 1, 1)).astype(f32)[:, None, None]
  half = sxy * (size - 1) / 2
  ax = np.linspace(-half, half, size, dtype=f32)
  yy, xx = ax[None, :, None], ax[None, None, :]

  # Global placement: heart centre in the image and scan-plane rotation of the whole scene.
  hcx, hcy = u01(-14.0, 14.0), u01(-14.0, 14.0)
  psi = np.deg2rad(u01(-35.0, 35.0))
  u, v = _frame(xx, yy, hcx, hcy, psi)  # canonical frame: +u patient left, +v posterior

  # --- Heart anatomy, drawn per subject.
  group, r_rng, t_rng, w_rng, c_rng = _GROUPS[int(rng.integers(len(_GROUPS)))]
  # Apparent heart size varies with the subject and the field of view (ACDC's pixel spacing
  # spans 0.7-1.9 mm): a few subjects cannot cover the range, which is the point.
  zoom = u01(0.7, 1.4)
  r0, t0, w0 = zoom * u01(*r_rng), zoom * u01(*t_rng), zoom * u01(*w_rng)
  if u01() < 0.5:  # end-systole: smaller cavity, thicker wall, smaller RV
    k = u01(*c_rng)
    r0, t0, w0 = r0 * k, t0 * (1.0 + 1.2 * (1.0 - k)), w0 * (0.6 + 0.4 * k)
  ecc, phi = u01(1.0, 1.3), u01(0, 2 * np.pi)
  e3, p3 = u01(0.0, 0.05), u01(0, 2 * np.pi)
  a1, p1, a2, p2 = u01(0.0, 0.25), u01(0, 2 * np.pi), u01(0.0, 0.12), u01(0, 2 * np.pi)
  inf_depth = u01(0.35, 0.6) if group == 'MINF' else 0.0
  inf_center, inf_width = u01(0, 2 * np.pi), u01(0.3, 0.6)
  theta = np.deg2rad(-150.0 + u01(-20.0, 20.0))  # RV lies anterior and to the patient's right
  span_p, span_m = np.deg2rad(u01(55.0, 90.0)), np.deg2rad(u01(50.0, 85.0))
  gamma = u01(0.35, 0.8)  # bluntness of the RV crescent
  rv_wall = zoom * u01(2.0, 3.5)

  # Base-to-apex coverage: where the stack starts and where each structure ends.
  base = u01(-0.08, 0.04)
  apex_epi = u01(0.92, 1.2)
  apex_endo = apex_epi - u01(0.08, 0.16)
  apex_rv = base + (apex_epi - base) * u01(0.75, 0.9)
  power = u01(2.0, 3.0)
  s_epi = _profile(tz, base, apex_epi, power)
  s_endo = _profile(tz, base, apex_endo, power)
  s_rv = _profile(tz, base, apex_rv, power)

  # LV centre per slice: long axis not perpendicular to the stack, plus breath-hold jitter.
  drift = rng.normal(0.0, 4.0, size=2)
  jitter = rng.normal(0.0, 0.8, size=(2, depth, 1, 1))
  du = u - (drift[0] * tz + jitter[0]).astype(f32)
  dv = v - (drift[1] * tz + jitter[1]).astype(f32)
  rho = np.sqrt(du * du + dv * dv) + f32(1e-6)
  c, s = du / rho, dv / rho  # cos and sin of the polar angle around the LV centre
  c2, s2 = c * c - s * s, 2 * c * s
  c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)

  # Endocardium: rotated ellipse with a slight 3-lobe wobble.
  ea, eb = r0 * np.sqrt(ecc), r0 / np.sqrt(ecc)
  cp, sp = _cos_shift(c, s, phi), _cos_shift(s, -c, phi)  # cos, sin of (angle - phi)
  r_endo_a = (ea * eb / np.sqrt((eb * cp) ** 2 + (ea * sp) ** 2)
              * (1.0 + e3 * _cos_shift(c3, s3, p3)))
  # Wall thickness varies around the ring; infarcted subjects get a thin segment.
  thick = t0 * (1.0 + a1 * _cos_shift(c, s, p1) + a2 * _cos_shift(c2, s2, 2 * p2))
  thick *= 1.0 - inf_depth * _bump(c, s, inf_center, inf_width)
  r_endo = r_endo_a * s_endo
  r_epi = (r_endo_a + thick) * s_epi
  # The wall never gets thinner than a pixel, so the ring stays closed on every slice.
  r_epi = np.maximum(r_epi, np.where(r_endo > 0, r_endo + f32(1.2 * sxy), f32(0)))
  lv = rho < r_endo
  epi = rho < r_epi

  # RV: a crescent on the LV epicardium centred on direction theta, sharing the septal wall.
  cd, sd = _cos_shift(c, s, theta), _cos_shift(s, -c, theta)  # cos, sin of (angle - theta)
  upper = sd >= 0
  x_rv = (1.0 - cd) / np.where(upper, f32(1.0 - np.cos(span_p)), f32(1.0 - np.cos(span_m)))
  width = (w0 * s_rv).astype(f32)
  has_rv = width > 1.5 * sxy
  r_rv = r_epi + width * np.clip(1.0 - x_rv, 0.0, None) ** gamma
  rv = (rho < r_rv) & (x_rv < 1.0) & ~epi & has_rv
  # Free wall: same crescent over a slightly wider arc, thicker by the wall; labelled background.
  dw = rv_wall / (r0 + t0)
  x_w = (1.0 - cd) / np.where(upper, f32(1.0 - np.cos(span_p + dw)),
                              f32(1.0 - np.cos(span_m + dw)))
  r_rvw = r_epi + width * np.clip(1.0 - x_w, 0.0, None) ** gamma + f32(rv_wall)
  rv_outer = (rho < r_rvw) & (x_w < 1.0) & has_rv

  # Myocardium is the LV epicardial disc outside the cavity plus any pixel 4-adjacent to the
  # cavity, so the cavity is always enclosed by MYO (a tested property).
  myo = (epi | _dilate4(lv)) & ~lv
  rv &= ~myo
  rv_free_wall = rv_outer & ~rv & ~epi & ~myo
  heart = lv | myo | rv | rv_free_wall

  # Papillary muscles: dark blobs inside the cavity, labelled LV as in ACDC.
  pap = np.zeros(shape, dtype=bool)
  for sign in (-1.0, 1.0):
    ang = theta + np.pi + sign * np.deg2rad(u01(35.0, 60.0))
    rad = (u01(0.55, 0.7) * r0) * s_endo
    pr = (u01(2.5, 4.5) * min(1.0, r0 / 20.0)) * s_endo  # small cavities, small muscles
    pap |= (((du - rad * f32(np.cos(ang))) ** 2 + (dv - rad * f32(np.sin(ang))) ** 2 < pr * pr)
            & (s_endo > 0.45))
  pap &= lv

  # Epicardial fat: bright, thickest in the grooves where the RV meets the LV.
  fa = (u01(2.0, 7.0) * (_bump(c, s, theta + span_p, 0.35) + _bump(c, s, theta - span_m, 0.35))
        + u01(0.0, 4.0) * np.clip(_cos_shift(c2, s2, u01(0, 2 * np.pi)), 0.0, None) ** 3
        + u01(0.0, 1.5))
  fat_peri = ((rho < r_epi + fa * s_epi) | ((rho < r_rvw + fa) & (x_w < 1.0) & has_rv)) & ~heart

  # --- Surroundings, placed relative to the heart size.
  ext = r0 + t0
  body_a, body_b = u01(150.0, 190.0), u01(110.0, 135.0)
  body_cu, body_cv = u01(-30.0, 10.0), body_b - ext - u01(10.0, 45.0)
  p, q = _frame(u, v, body_cu, body_cv, np.deg2rad(u01(-8, 8)))
  r_body = np.sqrt((p / body_a) ** 2 + (q / body_b) ** 2)
  fat_sc, muscle = u01(4.0, 14.0), u01(6.0, 14.0)
  body = r_body < 1.0
  sc_fat = body & (r_body > 1.0 - fat_sc / body_b)
  wall = body & ~sc_fat & (r_body > 1.0 - (fat_sc + muscle) / body_b)
  inside = r_body < 1.0 - (fat_sc + muscle + u01(2.0, 8.0)) / body_b

  lung_l = _ellipse(u, v, ext + u01(25.0, 45.0), u01(-20.0, 15.0), u01(35.0, 50.0),
                    u01(60.0, 85.0), np.deg2rad(u01(-30, 10)), _wobble(rng, 0.12))
  lung_r = _ellipse(u, v, -ext - u01(30.0, 55.0), -u01(10.0, 40.0), u01(30.0, 45.0),
                    u01(45.0, 70.0), np.deg2rad(u01(-20, 30)), _wobble(rng, 0.12))
  lungs = (lung_l | lung_r) & inside
  # Toward the apex the slice nears the diaphragm: liver and stomach rise into view.
  rise = f32(u01(10.0, 30.0)) * tz
  liver = _ellipse(u, v, -ext - u01(5.0, 30.0), ext + u01(25.0, 55.0) - rise, u01(60.0, 90.0),
                   u01(40.0, 60.0), np.deg2rad(u01(-25, 10)), _wobble(rng, 0.1)) & body
  stomach = _ellipse(u, v, ext + u01(5.0, 35.0), ext + u01(35.0, 60.0) - rise, u01(18.0, 32.0),
                     u01(14.0, 26.0), u01(0, np.pi), _wobble(rng, 0.15)) & body
  ang_ao = np.deg2rad(u01(55.0, 90.0))
  r_ao = u01(9.0, 13.0)
  dist_ao = ext + 0.2 * w0 + u01(8.0, 20.0) + r_ao
  ao_cu, ao_cv = dist_ao * np.cos(ang_ao), dist_ao * np.sin(ang_ao)
  d_ao = np.sqrt((u - ao_cu) ** 2 + (v - ao_cv) ** 2)
  aorta_in = d_ao < r_ao
  aorta_wall = (d_ao < r_ao + 1.5) & ~aorta_in
  sp_cu, sp_cv = ao_cu - u01(20.0, 35.0), ao_cv + u01(10.0, 25.0)
  spine = _ellipse(u, v, sp_cu, sp_cv, u01(14.0, 19.0), u01(12.0, 16.0), u01(-0.3, 0.3))
  spine_ring = _ellipse(u, v, sp_cu, sp_cv, 20.0, 18.0) & ~spine

  # --- Per-subject contrast; ranges overlap on purpose (fat ~ blood, chest wall ~ myocardium).
  blood = u01(0.75, 1.0)
  i_lv = (blood * rng.uniform(0.92, 1.06, size=(depth, 1, 1))).astype(f32)  # inflow varies
  i_rv = i_lv * f32(u01(0.7, 1.05))
  i_myo = blood * u01(0.12, 0.55)
  i_fat = blood * u01(0.5, 1.1)
  i_tissue = blood * u01(0.2, 0.6)
  i_muscle = i_myo * u01(0.7, 1.4)
  i_liver = blood * u01(0.28, 0.5)
  i_lung = blood * u01(0.02, 0.08)
  i_vessel = blood * u01(0.3, 0.6)
  i_aorta = blood * u01(0.65, 1.0)
  i_spine = blood * u01(0.3, 0.55)
  i_stomach = blood * (u01(0.6, 0.95) if u01() < 0.6 else u01(0.03, 0.1))

  # Painter's order: later structures overwrite earlier ones.
  img = np.where(body, f32(i_tissue), f32(0.0))
  img = np.where(sc_fat, f32(i_fat), img)
  img = np.where(wall, f32(i_muscle), img)
  # Lung vessels: sparse impulses blurred into small bright dots.
  imp = (rng.random(shape, dtype=f32) < u01(0.002, 0.006)).astype(f32)
  vessels = np.clip(ndimage.gaussian_filter(imp, (0, 1.0, 1.0)) * f32(2 * np.pi), 0, 1)
  img = np.where(lungs, i_lung + f32(i_vessel) * vessels, img)
  img = np.where(liver, f32(i_liver), img)
  img = np.where(stomach, f32(i_stomach), img)
  img = np.where(spine_ring, f32(0.35 * i_spine), img)
  img = np.where(spine, f32(i_spine), img)
  img = np.where(aorta_wall, f32(i_myo), img)
  img = np.where(aorta_in, f32(i_aorta), img)
  img = np.where(fat_peri, f32(i_fat), img)
  img = np.where(rv_free_wall, f32(i_myo), img)
  img = np.where(rv, i_rv, img)
  img = np.where(myo, f32(i_myo), img)
  img = np.where(lv, i_lv, img)
  img = np.where(pap, f32(i_myo), img)

  # Low-frequency texture so that no organ is perfectly flat.
  tex = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=f32), (0, 3.0, 3.0))
  img *= 1.0 + f32(u01(0.05, 0.15)) * tex / (tex.std() + f32(1e-8))
  # Partial volume at boundaries: blur the image, never the label.
  img = ndimage.gaussian_filter(img, (0, u01(0.5, 1.5), u01(0.5, 1.5)))

  # Smooth multiplicative coil bias: low-order polynomial plus a surface-coil hot spot.
  gx, gy = xx / f32(half), yy / f32(half)
  cb = rng.normal(0.0, u01(0.1, 0.4), size=6).astype(f32)
  log_bias = (cb[0] * gx + cb[1] * gy + cb[2] * gx * gx + cb[3] * gy * gy + cb[4] * gx * gy
              + cb[5] * (2 * tz - 1))
  hx, hy = u01(-1.0, 1.0), u01(-1.2, 0.0)
  log_bias = log_bias + f32(u01(0.0, 0.6)) * np.exp(-((gx - hx) ** 2 + (gy - hy) ** 2) / 0.5)
  img *= np.exp(log_bias)

  # Rician noise: magnitude of the signal plus complex Gaussian noise.
  sigma = f32(blood * u01(0.02, 0.12))
  noise = rng.standard_normal((2,) + shape, dtype=f32) * sigma
  img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)

  # Min-max to [0, 1], with the top 0.2% clipped so that one hot voxel cannot dim the volume.
  lo, hi = img.min(), np.percentile(img, 99.8)
  image = np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
  label = np.zeros(shape, dtype=np.uint8)
  label[rv] = RV
  label[myo] = MYO
  label[lv] = LV
  return image, label


def load(config) -> SegmentationData:
  """The 2D phantom as SegmentationData: the first `data.labeled_num` training volumes labeled."""
  s = SPEC.block(config)
  data = make_dataset(seed=config.seed, num_train=s['num_train'], num_val=s['num_val'],
                      num_test=s['num_test'], num_slices=s['num_slices'], size=s['size'])
  n = splits.num_labeled(config, s['num_train'], 'synthetic phantom')
  return spec.assemble(
      'synthetic', data['train'], n, {'val': data['val'], 'test': data['test']},
      f'synthetic cardiac phantom: {n} labeled volumes, {s["num_train"] - n} unlabeled, '
      f'{s["num_val"]} validation volumes ({s["num_slices"]} slices of {s["size"]}x{s["size"]})')


SPEC = spec.DatasetSpec(
    name='synthetic', detect=None, load=load, classes=lambda config: CLASS_NAMES,
    config={'num_train': 40, 'num_val': 8, 'num_test': 8, 'num_slices': 8, 'size': 128},
    axes=spec.slices_last, normalize=spec.minmax)
