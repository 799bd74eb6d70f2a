"""Experiment configs: Python files in `experiments/` whose `get_config(profile)` returns a ConfigDict.

`profile` is 'paper' when the user gives real data (`--data-dir`), 'cpu' for the built-in
synthetic phantom with a budget that finishes in minutes on a laptop-class CPU.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib

import ml_collections

from jaxseg.errors import ConfigError, DataError

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'experiments'


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment: the SSL4MIS ACDC protocol."""
  c = ml_collections.ConfigDict()
  c.experiment = ''
  c.seed = 0
  c.num_classes = 4
  c.class_names = ('RV', 'MYO', 'LV')
  c.steps = 30_000

  c.data = ml_collections.ConfigDict()
  c.data.dir = ''  # empty: the built-in synthetic phantom
  c.data.labeled_num = 7  # patients (ACDC) or volumes (synthetic); SSL4MIS 7 = 136 slices
  c.data.labeled_fraction = 0.0  # KiTS19/CRAG: fraction of training cases labeled (0: labeled_num)
  c.data.split_seed = 0  # KiTS19/CRAG have no published split: a seeded permutation
  c.data.kits_window = (-79.0, 304.0)  # HU window (nnU-Net's KiTS19 foreground percentiles)
  c.data.kits_train_size = 0  # resize KiTS19 training slices at load (0: native 512)
  c.data.crag_channels = 1  # CRAG: 1 (BT.601 luma) or 3 (RGB)
  c.data.image_size = 256
  c.data.labeled_batch = 12
  c.data.unlabeled_batch = 12
  c.data.rotate_degrees = 20.0
  c.data.crop_size = 0  # 0: no crop
  c.data.image_order = 0  # spline order for image rotation/resize; SSL4MIS uses 0 (nearest)
  c.data.strong_ops = ()  # SSL4MIS mean teacher perturbs with input noise instead (see losses)
  c.data.read_threads = 4
  c.data.synthetic = ml_collections.ConfigDict(
      dict(num_train=40, num_val=8, num_test=8, num_slices=8, size=128))

  c.model = ml_collections.ConfigDict()
  c.model.name = 'unet'
  c.model.channels = (16, 32, 64, 128, 256)
  c.model.dropout = (0.05, 0.1, 0.2, 0.3, 0.5)
  c.model.norm = 'batch'
  c.model.projection_dim = 0  # > 0 adds a projection head (patch/global contrast)
  c.model.projection_hidden = 256

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'  # 'sgd' (SSL4MIS) or 'adam' (PLGCL)
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = 'poly'  # 'poly' (power 0.9 to zero at `steps`) or 'constant'
  c.optimizer.poly_power = 0.9

  # Loss terms summed by the train step, by registry name (jaxseg/training/objectives.py).
  c.losses = ('supervised',)
  c.supervised = ml_collections.ConfigDict(dict(kind='ce_dice'))
  c.mean_teacher = ml_collections.ConfigDict(dict(
      consistency='mse',  # 'mse' of softmax (SSL4MIS), 'ce' soft or 'ce_hard' (PLGCL eq. 6)
      weight=0.1,
      rampup_length=30_000,  # steps; SSL4MIS: 200 'epochs' of 150 iterations
      rampup_interval=150,  # SSL4MIS advances the ramp every 150 iterations
      start_step=1_000,  # SSL4MIS: no consistency at all before iteration 1,000
      teacher_noise=0.1,  # SSL4MIS: teacher input + clip(N(0, 0.1), -0.2, 0.2)
      teacher_noise_clip=0.2,
  ))
  c.ema = ml_collections.ConfigDict(dict(rule='ssl4mis', decay=0.99))  # or rule='fixed'
  # PLGCL (jaxseg/methods/plgcl.py, jaxseg/losses/plgcl.py); paper values, see BUILD_NOTES.md.
  c.plgcl = ml_collections.ConfigDict(dict(
      weight=0.2,  # gamma in eq. 8
      warmup_steps=0,  # steps with PLGCL off (paper: 50 epochs)
      patch=32, num_pos=20, tau=0.2, lam=4.0,
      zeta='count',  # 'count' (eq. 5 derivation: number of negative keys) or a number
      sampler='entropy',  # 'entropy' (paper), 'confidence' or 'cosine' (Table 3)
      entropy_scope='class',  # nearest in Ent^k among class-k patches, or 'all' (literal)
      assign='dominant', min_conf=0.1,  # patch class: argmax of mean confidence
      num_anchors=0,  # 0: every patch is an anchor; else a random subset of this size
      foreground_anchors=False,  # only patches of a foreground class as anchors
      embedding='patches',  # 'patches' through the encoder (paper) or pooled 'regions'
      pseudo_label='student',  # confidence maps of unlabeled images: 'student' (paper) or 'teacher'
  ))

  c.eval = ml_collections.ConfigDict(dict(
      every=200, patch_size=256, interp_order=0, empty='nan', batch_size=32,
      units='voxels',  # 'voxels' as SSL4MIS, or 'mm' when the data has spacing
      mode='slices',  # 'slices' (2D networks) or 'sliding_window' (3D; window, stride in voxels)
      window=(112, 112, 80), stride=(18, 18, 4)))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=2))
  c.log_every = 10
  c.mesh = ml_collections.ConfigDict(dict(num_devices=0))  # 0: all local devices
  return c


def find_experiment(name: str) -> pathlib.Path:
  path = pathlib.Path(name)
  if path.suffix == '.py' and path.exists():
    return path
  path = EXPERIMENTS_DIR / f'{name}.py'
  if not path.exists():
    known = ', '.join(list_experiments())
    raise ConfigError(f'unknown experiment {name!r}; known: {known}')
  return path


def list_experiments() -> list[str]:
  return sorted(p.stem for p in EXPERIMENTS_DIR.glob('*.py') if not p.stem.startswith('_'))


def load_experiment(name: str, profile: str) -> ml_collections.ConfigDict:
  """Imports `experiments/<name>.py` and returns its `get_config(profile)`."""
  path = find_experiment(name)
  spec = importlib.util.spec_from_file_location(f'jaxseg_experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(profile)
  config.experiment = path.stem
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies `key.sub=value` strings; the value is parsed as a Python literal when it is one."""
  for item in overrides:
    key, sep, raw = item.partition('=')
    if not sep:
      raise ConfigError(f'--set {item!r}: expected key=value')
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f'--set {key}: unknown config key {part!r}')
      node = node[part]
    if leaf not in node:
      raise ConfigError(f'--set {key}: unknown config key; keys here: {", ".join(sorted(node.keys()))}')
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    if isinstance(old, float) and isinstance(value, int):
      value = float(value)
    if old is not None and value is not None and type(old) is not type(value):
      raise ConfigError(f'--set {key}={raw}: expected {type(old).__name__}, got {type(value).__name__}')
    with config.unlocked():
      node[leaf] = value


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `<workdir>/config.json`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise DataError(f'{path}: missing; {workdir} is not a jaxseg run directory')
  try:
    with open(path) as f:
      config = from_json(f.read())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
    raise DataError(f'{path}: not a valid jaxseg run config ({type(e).__name__}: {e})') from None
  missing = sorted(set(base_config().keys()) - set(config.keys()))
  if missing:
    raise DataError(f'{path}: not a complete jaxseg run config (missing {", ".join(missing)})')
  return config


def from_json(text: str) -> ml_collections.ConfigDict:
  def tuples(obj):
    if isinstance(obj, dict):
      return {k: tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
      return tuple(tuples(v) for v in obj)
    return obj
  return ml_collections.ConfigDict(tuples(json.loads(text)))


def cpu_profile(config: ml_collections.ConfigDict, steps: int = 1000) -> ml_collections.ConfigDict:
  """Scales the paper protocol to the synthetic phantom on a 2-core CPU (about 10 minutes).

  The phantom is generated at 96x96, batches are 4 labeled + 4 unlabeled, and every
  step-counted schedule (ramp-up, consistency start) shrinks with the step budget by the same
  factor, so the run has the paper's shape at a smaller scale.
  """
  scale = steps / config.steps
  config.steps = steps
  config.data.dir = ''
  config.data.labeled_num = 4  # of 40 phantom volumes: 10%, as ACDC's 7 of 70 patients
  config.data.synthetic.size = 96
  config.data.image_size = 96
  config.data.labeled_batch = 4
  config.data.unlabeled_batch = 4
  config.data.read_threads = 2
  config.data.image_order = 1  # bilinear: at 96 px nearest-neighbour resizing is too coarse
  config.mean_teacher.rampup_length = int(config.mean_teacher.rampup_length * scale)
  config.mean_teacher.rampup_interval = max(1, int(config.mean_teacher.rampup_interval * scale))
  config.mean_teacher.start_step = int(config.mean_teacher.start_step * scale)
  config.eval.every = 250
  config.eval.patch_size = 96
  config.checkpoint.every = 250
  return config
