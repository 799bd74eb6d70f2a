"""Shared test set-up: a persistent XLA cache so identical programs compile once per session."""

import contextlib
import io
import os
import tempfile

import jax
import pytest

jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('JAXSEG_TEST_CACHE', os.path.join(tempfile.gettempdir(),
                                                                   'jaxseg-test-xla-cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)

ACDC_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'ACDC')


@pytest.fixture
def acdc_dir():
  """The real ACDC data beside the checkout (../shared/data/ACDC), or skip."""
  if not os.path.exists(os.path.join(ACDC_DIR, 'train_slices.list')):
    pytest.skip('real ACDC data not found at ../shared/data/ACDC')
  return os.path.abspath(ACDC_DIR)


# --- command lines and finished runs (tests of jaxseg.run, .evaluate, .predict, .report ...) ----


def call(main, argv) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of a command's `main(argv)`, captured in-process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = main([str(a) for a in argv])
  return rc, out.getvalue(), err.getvalue()


def call_run(data_dir, workdir, *extra, experiment: str = 'smoke') -> tuple[int, str, str]:
  """`python -m jaxseg.run --experiment EXPERIMENT [--workdir W] [--data-dir D] EXTRA...`,
  in-process; None leaves the flag out."""
  from jaxseg import run  # noqa: PLC0415
  argv = ['--experiment', experiment]
  if workdir is not None:
    argv += ['--workdir', workdir]
  if data_dir is not None:
    argv += ['--data-dir', data_dir]
  return call(run.main, argv + list(extra))


def error_line(rc: int, err: str, *words) -> str:
  """Checks exit 2 and that stderr ends with one `error: ` line holding every word."""
  assert rc == 2, err
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [i for i, line in enumerate(lines) if line.startswith('error: ')]
  assert len(errors) == 1 and errors[0] == len(lines) - 1, err
  assert 'Traceback' not in err
  for word in words:
    assert str(word) in lines[-1], lines[-1]
  return lines[-1]


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
  """Every file under `folder` with its bytes and modification time: equal snapshots mean
  nothing was written."""
  return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(folder.rglob('*')) if p.is_file()}


def rewrite_h5(path, key: str, change) -> None:
  """Replaces dataset `key` of an h5 file by `change(its array)` (which may change its shape)."""
  import h5py  # noqa: PLC0415
  with h5py.File(path, 'r+') as f:
    value = change(f[key][()])
    del f[key]
    f.create_dataset(key, data=value)


def save_run(workdir, config, steps: dict[str, tuple[int, ...]]) -> dict[int, object]:
  """A run directory made without training: `config.json` and, for each kind ('best',
  'latest'), checkpoints at the given steps of a fresh state whose parameters are shifted by
  the step, so that every checkpoint is told apart. Returns {step: the state saved}."""
  from jaxseg import config as config_lib  # noqa: PLC0415
  from jaxseg.models import build_model  # noqa: PLC0415
  from jaxseg.training import checkpoint, schedules, step as step_lib  # noqa: PLC0415
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config_lib.to_json(config))
  state = step_lib.init_state(build_model(config), schedules.optimizer(config), config)
  saved = {}
  ckpts = checkpoint.Checkpoints(str(workdir), keep=10)
  try:
    for kind, kind_steps in steps.items():
      for s in kind_steps:
        shifted = jax.tree.map(lambda p, s=s: p + s, state.params)
        saved[s] = state.replace(step=s, params=shifted)
        ckpts.save(kind, s, saved[s], None, {'step': s, 'best': {'dice': 0.5, 'step': s}})
  finally:
    ckpts.close()
  return saved


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory):
  """A tiny run trained as `python -m jaxseg.run` trains one (`run.train_and_report`): 4 steps
  validated at 2 and 4, a checkpoint every step (all kept), its report written. Read only."""
  from jaxseg import run  # noqa: PLC0415
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  config = tiny_config()
  with config.unlocked():
    config.steps = 4
    config.eval.every = 2
    config.checkpoint.every = 1
    config.checkpoint.keep = 4
    config.report = True
  run.train_and_report(config, str(workdir), progress=False)
  return workdir


class KilledAfter:
  """Wraps the train iterator; the (n+1)-th batch request 'kills' the run."""

  def __init__(self, iterator, n):
    self.iterator, self.n = iterator, n

  def __next__(self):
    if self.n == 0:
      raise KeyboardInterrupt('killed')
    self.n -= 1
    return next(self.iterator)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def train_setup(config, num_devices: int = 1):
  """(model, jitted step, replicated state, batch iterator, mesh) for `config`: the loop's own
  set-up, for tests that drive the step themselves."""
  from jaxseg.data import datasets, pipeline  # noqa: PLC0415
  from jaxseg.models import build_model  # noqa: PLC0415
  from jaxseg.training import schedules, step as step_lib  # noqa: PLC0415
  data = datasets.load_data(config)
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  mesh = step_lib.make_mesh(num_devices)
  jitted = step_lib.jit_train_step(train_step, mesh)
  state = step_lib.replicate(step_lib.init_state(model, tx, config), mesh)
  streams = step_lib.streams(config)
  batches = pipeline.make_train_iterator(data, config, streams.unlabeled, streams.labeled)
  return model, jitted, state, batches, mesh


def data_config(data_dir, num_classes: int, image_order: int = 1, **data):
  """The config a dataset loader reads: seed, num_classes, `data.dir`, one labeled case and
  `data` (a dataset's block as a dict, e.g. `kits19=dict(train_size=8)`)."""
  import ml_collections  # noqa: PLC0415
  return ml_collections.ConfigDict(dict(
      seed=0, num_classes=num_classes,
      data={'dir': str(data_dir), 'labeled_num': 1, 'image_order': image_order, **data}))


def config_3d(data_dir='', **data):
  """A 3D config of one foreground class on `data_dir` (the tiny 3D phantom when empty)."""
  from jaxseg import config as config_lib  # noqa: PLC0415
  c = config_lib.base_config()
  c.num_classes = 2
  c.class_names = ('target',)
  c.data.dir = data_dir
  c.data.crop_shape = (16, 16, 8)
  c.data.labeled_num = 2
  c.data.holdout_num = 2
  c.data.labeled_batch = 2
  c.data.unlabeled_batch = 2
  c.data.read_threads = 1
  c.data.synthetic3d.update(dict(num_train=6, num_val=1, num_test=1, size=20))
  c.data.update(data)
  return c


def tiny_config(experiment: str = 'smoke', **data):
  """An experiment's config shrunk to the smoke test's size (a few seconds per run)."""
  from jaxseg import config as config_lib
  config = config_lib.load_experiment(experiment, 'cpu')
  smoke = config_lib.load_experiment('smoke', 'cpu')
  if config.data.crop_shape:
    return _tiny_3d(config, smoke, **data)
  with config.unlocked():
    all_labeled = config.data.labeled_num >= config.data.synthetic.num_train
    projection_dim, strong_ops = config.model.projection_dim, config.data.strong_ops
    pixel_projection_dim = config.model.pixel_projection_dim
    for key in ('data', 'model', 'eval', 'checkpoint'):
      config[key].update(smoke[key].to_dict())
    config.model.projection_dim = min(projection_dim, 16)  # a method's head stays, smaller
    config.model.pixel_projection_dim = min(pixel_projection_dim, 8)
    config.data.strong_ops = strong_ops  # the experiment's augmentation is part of its method
    if all_labeled:  # a fully supervised experiment stays fully supervised
      config.data.labeled_num = smoke.data.synthetic.num_train
    config.data.update(data)
    config.steps = smoke.steps
    config.log_every = 1
    config.report = False  # tests/test_report.py covers it; 5-10 s per run otherwise
    # A stage identical to one before it (LCLPL's rounds) runs once: same programs, same path.
    kept, seen = [], []
    for name in config.stage_order:
      partial = config.stages[name].to_dict()
      if partial not in seen:
        kept.append(name)
        seen.append(partial)
    config.stage_order = tuple(kept)
    for stage in config.stages.values():  # every stage of a staged run shrinks the same way
      stage.steps = 2  # stages run in sequence: keep each short
      if 'data' in stage:
        for key in ('labeled_batch', 'unlabeled_batch', 'image_size'):
          if key in stage.data:
            stage.data[key] = smoke.data[key]
      if 'eval' in stage and stage.eval.get('every'):
        stage.eval.every = smoke.eval.every
    if 'mean_teacher' in config:  # consistency on from the first step
      config.mean_teacher.update(start_step=0, rampup_length=4, rampup_interval=1)
  return config


def _tiny_3d(config, smoke, **data):
  """A 3D experiment at the smallest widths, on 16^3 crops of a tiny 3D phantom: the
  experiment's network, losses and evaluation mode stay."""
  with config.unlocked():
    config.data.update(dict(crop_shape=(16, 16, 16), labeled_num=2, labeled_batch=2,
                            unlabeled_batch=2, read_threads=1))
    config.data.synthetic3d.update(dict(num_train=4, num_val=1, num_test=1, size=20))
    config.data.update(data)
    config.model.update(dict(base_filters=2, resnet_blocks=(1, 1, 1, 1)))
    config.eval.update(dict(window=(16, 16, 16), stride=(8, 8, 8), batch_size=2,
                            every=smoke.eval.every))
    config.checkpoint.update(smoke.checkpoint.to_dict())
    config.steps = smoke.steps
    config.log_every = 1
    config.report = False
    if 'mean_teacher' in config:
      config.mean_teacher.update(start_step=0, rampup_length=4, rampup_interval=1)
  return config


def write_ssl4mis_tree(root, splits: dict, size=(24, 20), depth: int = 3):
  """A tiny ACDC folder in the SSL4MIS layout: for each split in `splits` ({'train': patients,
  'val': ..., 'test': ...}) `<split>.list` (`train_slices.list` for train), `data/<vol>.h5` with
  two frames per patient and, for train, `data/slices/<vol>_slice_<z>.h5`. Images are uniform
  noise in [0, 1]; labels are nested discs of classes 1..3."""
  import h5py  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  h, w = size
  r = np.hypot(*np.mgrid[:h, :w] - np.array([h / 2, w / 2])[:, None, None])
  label = np.repeat(np.select([r < 5, r < 7, r < 8], [3, 2, 1], 0).astype(np.uint8)[None], depth, 0)
  (root / 'data' / 'slices').mkdir(parents=True)
  seed = 0
  for split, patients in splits.items():
    names = []
    for patient in patients:
      for frame in (1, 2):
        volume = f'{patient}_frame{frame:02d}'
        image = np.random.default_rng(seed).random((depth, h, w)).astype(np.float32)
        seed += 1
        with h5py.File(root / 'data' / f'{volume}.h5', 'w') as f:
          f.create_dataset('image', data=image)
          f.create_dataset('label', data=label)
        if split != 'train':
          names.append(volume)
          continue
        for z in range(depth):
          with h5py.File(root / 'data' / 'slices' / f'{volume}_slice_{z}.h5', 'w') as f:
            f.create_dataset('image', data=image[z])
            f.create_dataset('label', data=label[z])
          names.append(f'{volume}_slice_{z}')
    list_name = 'train_slices.list' if split == 'train' else f'{split}.list'
    (root / list_name).write_text('\n'.join(names) + '\n')
  return root


def write_nnunet_tree(root, num_cases: int = 4, channels: int = 1, shape=(32, 32, 16),
                      zooms=(0.8, 0.8, 2.5), num_test: int = 1, name: str = 'Dataset001_Tiny'):
  """A tiny dataset in the nnU-Net raw layout under `root/name`: `dataset.json` (labels
  background 0, inner 1, outer 2), `imagesTr/{case}_{c:04d}.nii.gz` per channel,
  `labelsTr/{case}.nii.gz`, `imagesTs/`. Stored shape (X, Y, Z) with the largest spacing on
  Z; labels are nested spheres, brighter than the noise around them. Returns the folder."""
  import json  # noqa: PLC0415
  import nibabel as nib  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  folder = root / name
  for sub in ('imagesTr', 'labelsTr', 'imagesTs'):
    (folder / sub).mkdir(parents=True)
  affine = np.diag(list(zooms) + [1.0])
  affine[:3, 3] = (10.0, -20.0, 5.0)
  grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing='ij'), -1) * zooms
  for i in range(num_cases + num_test):
    rng = np.random.default_rng(i)
    center = np.array(shape) * zooms * rng.uniform(0.4, 0.6, 3)
    r = np.linalg.norm(grid - center, axis=-1)
    label = np.select([r < 5, r < 9], [1, 2], 0).astype(np.uint8)
    case = f'case_{i:03d}'
    test = i >= num_cases
    for c in range(channels):
      image = (label * (100.0 + 50 * c) + rng.normal(0, 20, shape)).astype(np.float32)
      nib.save(nib.Nifti1Image(image, affine),
               str(folder / ('imagesTs' if test else 'imagesTr') / f'{case}_{c:04d}.nii.gz'))
    if not test:
      nib.save(nib.Nifti1Image(label, affine), str(folder / 'labelsTr' / f'{case}.nii.gz'))
  meta = {'channel_names': {str(c): f'MR{c}' for c in range(channels)},
          'labels': {'background': 0, 'inner': 1, 'outer': 2},
          'numTraining': num_cases, 'file_ending': '.nii.gz'}
  (folder / 'dataset.json').write_text(json.dumps(meta))
  return folder
