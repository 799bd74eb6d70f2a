"""Shared test set-up: a persistent XLA cache so identical programs compile once per session."""

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
