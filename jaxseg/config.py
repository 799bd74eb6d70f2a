"""Experiment configs: Python files in `experiments/` whose `get_config(profile)` returns a ConfigDict.

`profile` is 'paper' when the user gives real data (`--data-dir`), 'cpu' for the built-in
synthetic phantom with a budget that finishes in minutes on a laptop-class CPU.

A config holds the shared keys (data, model, optimizer, evaluation...) and the blocks of the loss
terms its run uses, each term's own (jaxseg/methods: `mean_teacher` and `ema` for the mean
teacher, `plgcl`, ...): `base_config(losses=..., stage_losses=...)` adds them, and a run's
config.json holds no other method's block. An experiment file returns one config from
`get_config(profile)`, or several related ones by name (`EXPERIMENTS`, `get_config(profile, name)`).
"""

from __future__ import annotations

import ast
import contextvars
import importlib.util
import json
import os
import pathlib

import ml_collections

from jaxseg import methods
from jaxseg.data import datasets
from jaxseg.errors import ConfigError, DataError

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'experiments'


def base_config(losses=('supervised',), *, stage_losses=()) -> ml_collections.ConfigDict:
  """Defaults shared by every experiment (the SSL4MIS ACDC protocol) with `losses` as the run's
  loss terms and the config blocks of those terms and of `stage_losses` (the terms only the
  stages of a staged run use)."""
  c = ml_collections.ConfigDict()
  c.experiment = ''
  c.seed = 0
  c.num_classes = 4
  c.class_names = ('RV', 'MYO', 'LV')
  c.steps = 30_000

  c.data = ml_collections.ConfigDict()
  c.data.dir = ''  # empty: the built-in synthetic phantom
  c.data.labeled_num = 7  # patients (ACDC) or volumes (synthetic); SSL4MIS 7 = 136 slices
  # KiTS19, CRAG, MSD, MM-WHS: the fraction of training cases labeled (0: labeled_num).
  c.data.labeled_fraction = 0.0
  # KiTS19/CRAG/MSD/MM-WHS/nnU-Net have no published split: a seeded permutation
  c.data.split_seed = 0
  c.data.image_size = 256
  c.data.labeled_batch = 12
  c.data.unlabeled_batch = 12
  c.data.rotate_degrees = 20.0
  c.data.crop_size = 0  # 0: no crop
  c.data.image_order = 0  # spline order for image rotation/resize; SSL4MIS uses 0 (nearest)
  c.data.strong_ops = ()  # SSL4MIS mean teacher perturbs with input noise instead (see losses)
  # Views the streams produce (jaxseg/data/pipeline.py): 'twin' adds an intensity-only twin of
  # each labeled image (supervised local contrast); the unlabeled stream can read every training
  # image ('all', labels dropped: global contrast) with independently drawn geometry per view.
  c.data.labeled_views = 'single'
  c.data.twin_ops = ('brightness', 'contrast', 'gamma', 'noise')
  c.data.unlabeled_source = 'unlabeled'
  c.data.unlabeled_views = 'shared'

  c.data.read_threads = 4
  # 3D runs (LA, Pancreas, the 3D phantom): a non-empty training crop (D, H, W) makes the run 3D.
  # Volumes keep their stored axis order (LA h5 and NIfTI: x, y, z with z the slice axis last),
  # so UA-MT's crop 112x112x80 and stride 18x18x4 apply verbatim.
  c.data.crop_shape = ()
  c.data.rot_flip = True  # UA-MT's RandomRotFlip before the crop (MCF's code crops only)
  c.data.strong_noise = 0.0  # 3D image_strong = image_weak + clip(N(0, s), -2s, 2s); 0: equal
  # K-fold cross-validation (LA, pancreas; `jaxseg.run --folds K` trains every fold): 0 = off.
  c.data.folds = 0
  c.data.fold = 0
  c.data.holdout_num = 4  # LA/Pancreas without test.list: last N of train.list validate
  # Each dataset's own options, `data.<dataset>.<key>` (e.g. data.kits19.window), defaults in
  # its module (jaxseg/data/datasets.py); a run keeps only its own dataset's block.
  c.data.update(datasets.default_blocks())

  c.model = ml_collections.ConfigDict()
  c.model.name = 'unet'
  c.model.channels = (16, 32, 64, 128, 256)
  c.model.dropout = (0.05, 0.1, 0.2, 0.3, 0.5)
  c.model.norm = 'batch'
  c.model.projection_dim = 0  # > 0 adds a projection head (patch/global contrast)
  c.model.projection_hidden = 256
  c.model.pixel_projection_dim = 0  # > 0 adds a per-pixel head (local pixel contrast)
  c.model.pixel_projection_hidden = 0  # 0: the decoder's width (channels[0])
  # 3D networks (jaxseg/models/{vnet,resnet3d,dualstream}.py): name 'vnet', 'resnet3d' or
  # 'dualstream' (two subnets on one input, `subnets` in order a, b).
  c.model.subnets = ('vnet', 'resnet3d')
  c.model.base_filters = 16  # UA-MT/MCF n_filters: widths 16..256; also the feature channels
  c.model.resnet_blocks = (3, 4, 6, 3)  # ResNet-34 basic blocks per stage
  c.model.dropout_3d = 0.5  # channel dropout on the last decoder map (and the V-Net bottleneck)
  c.model.vnet_residual = False  # UA-MT/MCF use plain conv stages; True: V-Net's residual ones
  # Convolution/pooling implementation (jaxseg/models/layers.py): 'xla' (XLA's own ops), 'fast'
  # (exact rewrites XLA:CPU runs several times faster), 'auto' (fast on the CPU backend only).
  c.model.conv_impl = 'auto'
  # Activation dtype of the train step: 'float32' or 'bfloat16' (mixed precision for GPUs/TPUs;
  # parameters, optimizer state, losses and metrics stay float32; jaxseg/training/step.py).
  c.model.dtype = 'float32'

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'  # 'sgd' (SSL4MIS) or 'adam' (PLGCL)
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = 'poly'  # 'poly' (power 0.9 to zero at `steps`), 'constant' or 'step'
  c.optimizer.poly_power = 0.9
  c.optimizer.decay_every = 2500  # 'step': lr x decay_factor every decay_every steps (UA-MT, MCF)
  c.optimizer.decay_factor = 0.1

  # Loss terms summed by the train step, by name in the table of jaxseg/methods/__init__.py; each
  # term's config blocks are added below (add_method_blocks).
  c.losses = tuple(losses)
  # Multi-stage runs (jaxseg/training/stages.py): stage names in order, each a partial config in
  # `stages` merged over this one. Empty: one stage, this config.
  c.stage_order = ()
  c.stages = ml_collections.ConfigDict()
  # What a stage starts from: 'previous' (the last state of the stage before; the first stage
  # starts from scratch) or 'previous_best' (its best checkpoint by validation Dice), and whether
  # the unlabeled images get pseudo-labels from that model first (self-training).
  c.stage = ml_collections.ConfigDict(dict(name='', init='previous', pseudo_labels=False))

  c.eval = ml_collections.ConfigDict(dict(
      every=200, patch_size=256, interp_order=0, empty='nan', batch_size=32,
      units='voxels',  # 'voxels' as SSL4MIS, or 'mm' when the data has spacing
      mode='slices',  # 'slices' (2D networks) or 'sliding_window' (3D; window, stride in voxels)
      window=(112, 112, 80), stride=(18, 18, 4)))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=2))
  c.log_every = 10
  c.report = True  # write report/ (figures + report.md, jaxseg/report.py) when training ends
  c.mesh = ml_collections.ConfigDict(dict(num_devices=0))  # 0: all local devices
  add_method_blocks(c, stage_losses)
  return c


def run_terms(config: ml_collections.ConfigDict, extra=()) -> list[str]:
  """The loss terms a run uses, in order of first use: its own, then its stages' (all defined
  stages, since `--set stage_order=...` may choose any of them), then `extra`."""
  names = list(config.get('losses', ()))
  for stage in config.get('stages', {}).values():
    names += list(stage.get('losses', ()))
  names += list(extra)
  return list(dict.fromkeys(names))


def add_method_blocks(config: ml_collections.ConfigDict, extra=()) -> None:
  """Adds the default config block of every term `config` uses (and of `extra`) that it lacks."""
  names = run_terms(config, extra)
  with config.unlocked():
    for term in methods.resolve(names) if names else ():
      for name, block in term.blocks().items():
        if name not in config:
          config[name] = block


def unused_method_blocks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config blocks of loss terms that `config` holds but none of its terms uses: runs made
  before configs held only their own terms' blocks carry every block, which changes nothing."""
  used = {name for term in methods.resolve(run_terms(config)) for name in term.blocks()}
  return tuple(key for key in config.keys() if key not in used and _owner_of_block(key))


def _owner_of_block(name: str) -> str | None:
  """The term of the table whose config block is `name`, if any."""
  for term in methods.TERMS.values():
    if name in term.blocks():
      return term.name
  return None


def _names_in(path: pathlib.Path) -> tuple[str, ...]:
  """The experiment names a file defines: its literal `EXPERIMENTS` tuple, else its stem. Read
  without importing the file (listing experiments stays cheap)."""
  for node in ast.parse(path.read_text()).body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], 'id', None) == 'EXPERIMENTS'):
      try:
        return tuple(ast.literal_eval(node.value))
      except ValueError:
        raise ConfigError(f'{path}: EXPERIMENTS must be a literal tuple of names') from None
  return (path.stem,)


def experiment_index() -> dict[str, pathlib.Path]:
  """{experiment name: its file} over experiments/ (files starting with '_' are helpers)."""
  return {name: path for path in sorted(EXPERIMENTS_DIR.glob('*.py'))
          if not path.stem.startswith('_') for name in _names_in(path)}


def find_experiment(name: str) -> tuple[pathlib.Path, str]:
  """(file, experiment name) of a known experiment name or of a path to an experiment file."""
  path = pathlib.Path(name)
  if path.suffix == '.py' and path.exists():
    return path, path.stem
  index = experiment_index()
  if name not in index:
    raise ConfigError(f'unknown experiment {name!r}; known: {", ".join(sorted(index))}')
  return index[name], name


def list_experiments() -> list[str]:
  return sorted(experiment_index())


def experiment_module(name: str):
  """Imports `experiments/<name>.py` (an experiment, or a shared `_helper` of several)."""
  path = EXPERIMENTS_DIR / f'{name}.py' if not name.endswith('.py') else pathlib.Path(name)
  spec = importlib.util.spec_from_file_location(f'jaxseg_experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Profiles every experiment has; an experiment offering more lists them in its `PROFILES`.
DEFAULT_PROFILES = ('paper', 'cpu')


def experiment_profiles(module, name: str) -> tuple[str, ...]:
  """The profiles of experiment `name` of `module`: its `PROFILES` (a tuple, or a dict by name
  in a file of several experiments), else DEFAULT_PROFILES."""
  profiles = getattr(module, 'PROFILES', DEFAULT_PROFILES)
  return tuple(profiles.get(name, DEFAULT_PROFILES) if isinstance(profiles, dict) else profiles)


def load_experiment(name: str, profile: str, *,
                    quick_steps: int | None = None) -> ml_collections.ConfigDict:
  """Imports the experiment's file and returns its `get_config(profile)` (with the name as a
  second argument in a file of several experiments). `quick_steps` builds the quick profile at
  that budget instead of QUICK_STEPS, its schedules scaled to it by the profile's one rule (what
  `--steps` means with `--profile quick`; setting only the step count would keep the schedules
  of the 1,500-step budget)."""
  if quick_steps is not None and profile != 'quick':
    raise ValueError(f'quick_steps is for the quick profile, not {profile!r}')
  path, name = find_experiment(name)
  module = experiment_module(str(path))
  profiles = experiment_profiles(module, name)
  if profile not in profiles:
    raise ConfigError(f'experiment {name} has no {profile!r} profile '
                      f'(it has: {", ".join(profiles)})')
  several = hasattr(module, 'EXPERIMENTS')
  # The budget reaches `quick_profile`, deep in the experiment's own code, without every
  # experiment threading it through its helpers.
  token = _QUICK_BUDGET.set(quick_steps or QUICK_STEPS)
  try:
    config = module.get_config(profile, name) if several else module.get_config(profile)
  finally:
    _QUICK_BUDGET.reset(token)
  config.experiment = name
  add_method_blocks(config)  # the blocks of stage terms the experiment did not name up front
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies `key.sub=value` strings; the value is parsed as a Python literal when it is one.
  Naming a new term in `losses` (or a stage's) adds that term's default config block."""
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
        owner = _owner_of_block(part) if node is config else None
        if owner:
          raise ConfigError(f'--set {key}: {part!r} is not a method of this run (its loss terms: '
                            f'{", ".join(run_terms(config))}; {part} belongs to {owner!r})')
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
    if leaf == 'losses':
      add_method_blocks(config)


# Keys a stage may not change: every stage trains the same network on the same data, and the
# final stage's checkpoints are evaluated with the run's top-level config.
FIXED_ACROSS_STAGES = ('model', 'num_classes', 'class_names', 'seed', 'stage_order', 'stages')


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config` with the partial config `config.stages[name]` merged over it (a single-stage one)."""
  if name not in config.stages:
    raise ConfigError(f'stage_order names {name!r}, but stages has no such entry '
                      f'(stages: {", ".join(config.stages.keys()) or "none"})')
  partial = config.stages[name]
  fixed = sorted(set(partial.keys()) & set(FIXED_ACROSS_STAGES))
  if fixed:
    raise ConfigError(f'stages.{name}: may not change {", ".join(fixed)} (fixed for all stages)')
  merged = ml_collections.ConfigDict(config.to_dict())

  def merge(node, update, path):
    for key, value in update.items():
      if key not in node:
        raise ConfigError(f'stages.{name}.{path}{key}: unknown config key')
      if isinstance(value, ml_collections.ConfigDict):
        merge(node[key], value, f'{path}{key}.')
      else:
        node[key] = value

  with merged.unlocked():
    merge(merged, partial, '')
    merged.stage_order = ()
    merged.stages = ml_collections.ConfigDict()
    merged.stage.name = name
  add_method_blocks(merged)  # a stage's own terms bring their default blocks
  return merged


def final_stage_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return stage_config(config, config.stage_order[-1]) if config.stage_order else config


def total_steps(config: ml_collections.ConfigDict) -> int:
  if not config.stage_order:
    return config.steps
  return sum(stage_config(config, name).steps for name in config.stage_order)


def set_total_steps(config: ml_collections.ConfigDict, steps: int) -> None:
  """Sets the training budget; a staged run keeps its stages' proportions (at least 1 step each,
  the rounding remainder going to the last stage), so `--steps` compares methods at one budget."""
  if steps < 1:
    raise ConfigError(f'--steps {steps}: must be at least 1')
  if not config.stage_order:
    config.steps = steps
    return
  lengths = [stage_config(config, name).steps for name in config.stage_order]
  scaled = [max(1, round(n * steps / sum(lengths))) for n in lengths[:-1]]
  last = steps - sum(scaled)
  if last < 1:
    raise ConfigError(f'--steps {steps}: too few for {len(lengths)} stages')
  for name, n in zip(config.stage_order, scaled + [last]):
    config.stages[name].steps = n


def check_sizes(config: ml_collections.ConfigDict, where: str = '') -> None:
  """Refuses batch sizes, step counts and image sizes a run cannot train with, before any work.

  The 2D U-Net halves its input once per level after the first; at a size it cannot halve
  evenly the decoder would resize its upsampled maps to the skip connections' sizes, silently
  dropping a row or column per odd level. Such sizes are refused and the nearest good ones named.
  """
  d = config.data
  checks = [('steps', config.steps), ('log_every', config.log_every),
            ('checkpoint.every', config.checkpoint.every),
            ('checkpoint.keep', config.checkpoint.keep), ('data.labeled_batch', d.labeled_batch),
            ('data.unlabeled_batch', d.unlabeled_batch),
            ('eval.batch_size', config.eval.batch_size)]
  if not d.get('crop_shape', ()):
    checks += [('data.image_size', d.image_size), ('eval.patch_size', config.eval.patch_size)]
  else:
    checks += [(f'data.crop_shape[{i}]', n) for i, n in enumerate(d.crop_shape)]
  for key, value in checks:
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f'{where}{key}={value!r}: must be a positive whole number')
  if config.eval.every < 0:
    raise ConfigError(f'{where}eval.every={config.eval.every}: must be 0 (no validation) or more')
  if config.model.name == 'unet' and not d.get('crop_shape', ()):
    factor = 2 ** (len(config.model.channels) - 1)
    for key, size in (('data.image_size', d.image_size),
                      ('eval.patch_size', config.eval.patch_size)):
      if size % factor:
        low, high = size // factor * factor, (size // factor + 1) * factor
        good = ' or '.join(str(n) for n in (low, high) if n > 0)
        raise ConfigError(f'{where}{key}={size}: the U-Net ({len(config.model.channels)} levels) '
                          f'needs a multiple of {factor}; use {good}')


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def read_run_config(workdir: str, resolve_stages: bool = True) -> ml_collections.ConfigDict:
  """The config a run saved in `<workdir>/config.json`.

  For a multi-stage run this is the final stage's config (the one whose checkpoints are in
  `<workdir>/checkpoints`: what evaluation and prediction need), unless `resolve_stages` is off.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise DataError(f'{path}: missing; {workdir} is not a jaxseg run directory')
  try:
    with open(path) as f:
      config = from_json(f.read())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
    raise DataError(f'{path}: not a valid jaxseg run config ({type(e).__name__}: {e})') from None
  missing = sorted(set(CORE_KEYS) - set(config.keys()))
  if missing:
    raise DataError(f'{path}: not a complete jaxseg run config (missing {", ".join(missing)})')
  config = with_defaults(config)
  return final_stage_config(config) if resolve_stages else config


# A run's config.json must hold these; keys added to the library since the run was made take
# their defaults (with_defaults), so older runs stay readable.
CORE_KEYS = ('data', 'model', 'losses', 'num_classes', 'steps', 'optimizer', 'eval')


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` over `base_config()` with the blocks of its terms (and of any other method whose
  block it holds): keys it lacks (newer than the run) get their defaults. Runs made before configs
  held only their own terms' blocks keep every block."""
  owners = [_owner_of_block(key) for key in config.keys()]
  merged = base_config(losses=config.get('losses', ('supervised',)),
                       stage_losses=run_terms(config, [owner for owner in owners if owner]))
  if 'data' in config:
    with config.unlocked():
      datasets.upgrade_old_keys(config.data)

  def merge(node, update):
    for key, value in update.items():
      if key in node and isinstance(node[key], ml_collections.ConfigDict) and isinstance(
          value, ml_collections.ConfigDict) and key != 'stages':
        merge(node[key], value)
      else:
        node[key] = value

  with merged.unlocked():
    merge(merged, config)
  return merged


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
  scale_schedules(config, steps / config.steps, ema=False)
  config.steps = steps
  config.data.dir = ''
  config.data.labeled_num = 4  # of 40 phantom volumes: 10%, as ACDC's 7 of 70 patients
  config.data.synthetic.size = 96
  config.data.image_size = 96
  config.data.labeled_batch = 4
  config.data.unlabeled_batch = 4
  config.data.read_threads = 2
  config.data.image_order = 1  # bilinear: at 96 px nearest-neighbour resizing is too coarse
  config.eval.every = 250
  config.eval.patch_size = 96
  config.checkpoint.every = 250
  return config


# The reduced real-data protocol (`--profile quick`), one budget for every 2D ACDC method so that
# their ranking can be measured on a CPU (BUILD_NOTES.md, "A quick real-data protocol").
QUICK_STEPS = 1500
QUICK_IMAGE_SIZE = 128
QUICK_BATCH = 6  # labeled and unlabeled images per step, each
QUICK_EVAL_EVERY = 100
# The budget `quick_profile` builds at when not told: QUICK_STEPS unless `load_experiment` was
# given another.
_QUICK_BUDGET = contextvars.ContextVar('quick_budget', default=QUICK_STEPS)


def scale_schedules(config: ml_collections.ConfigDict, scale: float, *,
                    ema: bool = True) -> None:
  """The one rule that shrinks a protocol to a smaller step budget: every schedule counted in
  steps is multiplied by `scale`, so a method passes through the same phases at the same
  fractions of its training. The optimizer's step-decay interval is scaled here; each term of
  the run scales its own (`LossTerm.scale_schedules`: the consistency ramp and start, PLGCL's
  warm-up, the dual-stream ramp, and with `ema` the EMA teacher's horizon 1/(1-alpha), at least
  mean_teacher.MIN_EMA_HORIZON). Stage lengths are scaled by `set_total_steps`."""
  config.optimizer.decay_every = max(1, round(config.optimizer.decay_every * scale))
  for term in methods.resolve(run_terms(config)):
    term.scale_schedules(config, scale, ema)


def quick_profile(config: ml_collections.ConfigDict, steps: int | None = None,
                  image_size: int = QUICK_IMAGE_SIZE,
                  batch: int = QUICK_BATCH) -> ml_collections.ConfigDict:
  """The paper protocol of a 2D ACDC experiment on real data, reduced to one shared budget.

  Every method gets the same image size, batches (`batch` labeled + `batch` unlabeled images per
  step, in every stage of a staged run; a fully supervised experiment reads its 2 x `batch`
  labeled ones), step budget and validation cadence; its optimizer, losses and weights stay the
  paper's, and its schedules shrink by `scale_schedules` with scale = budget / paper budget.
  Sizes in pixels that belong to a method (patch and block sizes) are the experiment's to scale.
  `steps` defaults to the budget `load_experiment` asked for (QUICK_STEPS unless told).
  """
  steps = steps or _QUICK_BUDGET.get()
  scale_schedules(config, steps / total_steps(config))
  set_total_steps(config, steps)
  config.data.image_size = image_size
  config.eval.patch_size = image_size
  config.data.labeled_batch = batch
  config.data.unlabeled_batch = batch
  config.eval.every = QUICK_EVAL_EVERY
  config.checkpoint.every = QUICK_EVAL_EVERY
  for stage in config.stages.values():
    data = stage.get('data', {})
    for key in ('labeled_batch', 'unlabeled_batch'):
      if key in data:
        data[key] = batch
    if stage.get('eval', {}).get('every'):
      stage.eval.every = QUICK_EVAL_EVERY
  return config
