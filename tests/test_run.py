"""`jaxseg.run` / `jaxseg.evaluate` command lines: bad input gives one `error:` line and exit 2
without touching a run directory; a smoke run on an SSL4MIS-layout folder works end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib

import h5py
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import evaluate, run

H, W, D = 24, 20, 3
TRAIN = ('patient001', 'patient002')  # train_slices.list, in this order
VAL = ('patient003',)  # val.list
# Keeps a run that must start tiny: 2 steps at 32 px, a 3-level U-Net, one validation.
TINY = ['--steps', '2', '--labeled-num', '1', '--no-progress',
        '--set', 'data.image_size=32', '--set', 'model.channels=(4,8,16)',
        '--set', 'model.dropout=(0.0,0.1,0.2)', '--set', 'eval.patch_size=32',
        '--set', 'eval.every=2', '--set', 'data.labeled_batch=2',
        '--set', 'data.unlabeled_batch=2', '--set', 'checkpoint.every=2']


def _write_h5(path: pathlib.Path, **datasets: np.ndarray) -> pathlib.Path:
  with h5py.File(path, 'w') as f:
    for key, value in datasets.items():
      f.create_dataset(key, data=value)
  return path


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A (D, H, W) image in [0, 1] and a label of nested discs with classes 0..3."""
  image = np.random.default_rng(seed).random((D, H, W)).astype(np.float32)
  r = np.hypot(*np.mgrid[:H, :W] - np.array([H / 2, W / 2])[:, None, None])
  label2d = np.select([r < 5, r < 7, r < 8], [3, 2, 1], 0).astype(np.uint8)
  return image, np.repeat(label2d[None], D, axis=0)


def _ssl4mis_tree(root: pathlib.Path) -> pathlib.Path:
  """`train_slices.list`, `val.list`, `data/<vol>.h5` and `data/slices/<vol>_slice_<z>.h5`."""
  (root / 'data' / 'slices').mkdir(parents=True)
  slices, seed = [], 0
  for patient in TRAIN + VAL:
    for frame in (1, 2):
      name = f'{patient}_frame{frame:02d}'
      image, label = _volume(seed)
      seed += 1
      _write_h5(root / 'data' / f'{name}.h5', image=image, label=label)
      if patient in TRAIN:
        for z in range(D):
          _write_h5(root / 'data' / 'slices' / f'{name}_slice_{z}.h5', image=image[z],
                    label=label[z])
          slices.append(f'{name}_slice_{z}')
  (root / 'train_slices.list').write_text('\n'.join(slices) + '\n')
  (root / 'val.list').write_text(''.join(f'{p}_frame{f:02d}\n' for p in VAL for f in (1, 2)))
  return root


def _slice_paths(root: pathlib.Path, patient: str) -> list[pathlib.Path]:
  return sorted((root / 'data' / 'slices').glob(f'{patient}_*.h5'))


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  return _ssl4mis_tree(tmp_path / 'ACDC')


def _call(fn, argv) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of `fn(argv)`, captured in-process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = fn([str(a) for a in argv])
  return rc, out.getvalue(), err.getvalue()


def _train(data_dir, workdir, *extra, experiment='smoke'):
  argv = ['--experiment', experiment]
  if workdir is not None:
    argv += ['--workdir', workdir]
  if data_dir is not None:
    argv += ['--data-dir', data_dir]
  return _call(run.main, argv + list(extra))


def _error_line(rc: int, err: str, *words: str) -> str:
  """Checks exit 2 and that stderr ends with one `error: ` line holding every word."""
  assert rc == 2, err
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [i for i, line in enumerate(lines) if line.startswith('error: ')]
  assert len(errors) == 1 and errors[0] == len(lines) - 1, err
  assert 'Traceback' not in err
  for word in words:
    assert str(word) in lines[-1], lines[-1]
  return lines[-1]


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[bytes, int]]:
  return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _existing_run_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  workdir = tmp_path / 'old_run'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'config.json').write_text(config_lib.to_json(config_lib.load_experiment('smoke', 'cpu')))
  (workdir / 'metrics.jsonl').write_text('{"step": 1, "loss": 0.5}\n')
  (workdir / 'checkpoints' / 'note.txt').write_text('keep me')
  return workdir


# --- bad data found before anything runs ------------------------------------------------


def test_data_dir_does_not_exist(tmp_path):
  rc, _, err = _train(tmp_path / 'nowhere', tmp_path / 'run', *TINY)
  _error_line(rc, err, tmp_path / 'nowhere', 'does not exist')
  assert not (tmp_path / 'run').exists()


def test_unknown_layout(tmp_path):
  folder = tmp_path / 'stuff'
  folder.mkdir()
  (folder / 'README').write_text('not a dataset')
  rc, _, err = _train(folder, tmp_path / 'run', *TINY)
  _error_line(rc, err, folder, 'unknown data layout', 'train_slices.list')
  assert not (tmp_path / 'run').exists()


def test_listed_slice_missing(data_dir, tmp_path):
  missing = _slice_paths(data_dir, 'patient002')[1]
  missing.unlink()
  rc, _, err = _train(data_dir, tmp_path / 'run', *TINY)
  _error_line(rc, err, missing, 'train_slices.list', 'missing')
  assert not (tmp_path / 'run').exists()


def test_listed_volume_missing(data_dir, tmp_path):
  missing = data_dir / 'data' / 'patient003_frame02.h5'
  missing.unlink()
  rc, _, err = _train(data_dir, tmp_path / 'run', *TINY)
  _error_line(rc, err, missing, 'val.list', 'missing')
  assert not (tmp_path / 'run').exists()


def test_val_list_missing(data_dir, tmp_path):
  (data_dir / 'val.list').unlink()
  rc, _, err = _train(data_dir, tmp_path / 'run', *TINY)
  _error_line(rc, err, data_dir / 'val.list', 'missing')
  assert not (tmp_path / 'run').exists()


def test_labeled_num_larger_than_the_training_set(data_dir, tmp_path):
  rc, _, err = _train(data_dir, tmp_path / 'run', *TINY, '--labeled-num', '3')
  _error_line(rc, err, 'train_slices.list', '--labeled-num 3', 'between 1 and 2')
  assert not (tmp_path / 'run').exists()


# --- bad slices, read lazily by the training stream -------------------------------------


def _corrupt(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _label_five(path):
  with h5py.File(path, 'r+') as f:
    label = f['label'][()]
    label[0, 0] = 5
    f['label'][...] = label


def _shape_mismatch(path):
  with h5py.File(path, 'r+') as f:
    label = f['label'][()]
    del f['label']
    f.create_dataset('label', data=label[:, :-2])


def _nan(path):
  with h5py.File(path, 'r+') as f:
    image = f['image'][()]
    image[3, 4] = np.nan
    f['image'][...] = image


# (damage, patient whose every slice is damaged, words the message must hold). With
# --labeled-num 1, patient001 feeds the labeled stream and patient002 the unlabeled one, so
# the first batch of that stream reads a damaged file whatever the shuffle.
LAZY_CASES = {
    'truncated': (_corrupt, 'patient001', ('not a readable HDF5', 'corrupt or truncated')),
    'label_5': (_label_five, 'patient001', ('label values [5] outside 0..3',)),
    'shape_mismatch': (_shape_mismatch, 'patient001',
                       ('label shape (24, 18) differs from image shape (24, 20)',)),
    'nan_unlabeled': (_nan, 'patient002', ('1 NaN',)),
}


@pytest.fixture(scope='module')
def lazy_results(tmp_path_factory):
  """Runs every LAZY_CASES damage once: {case: (rc, stderr, damaged paths, run dir)}."""
  results = {}
  for case, (damage, patient, _) in LAZY_CASES.items():
    tmp = tmp_path_factory.mktemp(case)
    root = _ssl4mis_tree(tmp / 'ACDC')
    damaged = _slice_paths(root, patient)
    for path in damaged:
      damage(path)
    rc, _, err = _train(root, tmp / 'run', *TINY)
    results[case] = (rc, err, damaged, tmp / 'run')
  return results


@pytest.mark.parametrize('case', sorted(LAZY_CASES))
def test_bad_slice_is_named_with_exit_2(lazy_results, case):
  rc, err, damaged, _ = lazy_results[case]
  line = _error_line(rc, err, *LAZY_CASES[case][2])
  named = line[len('error: '):].split(': ', 1)[0]
  assert named in {str(p) for p in damaged}, line


@pytest.mark.parametrize('case', sorted(LAZY_CASES))
def test_bad_slice_leaves_no_run_dir(lazy_results, case):
  rc, _, _, workdir = lazy_results[case]
  assert rc == 2
  assert not workdir.exists(), sorted(os.listdir(workdir))


# --- bad arguments ------------------------------------------------------------------------


def test_unknown_experiment(data_dir, tmp_path):
  rc, _, err = _train(data_dir, tmp_path / 'run', *TINY, experiment='no_such_method')
  _error_line(rc, err, "'no_such_method'", 'unknown experiment', 'smoke')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('item, words', [
    ('data.no_such_key=1', ('data.no_such_key', 'unknown config key', 'image_size')),
    ('nosection.lr=1', ('nosection', 'unknown config key')),
    ('data.image_size=big', ('data.image_size', 'expected int, got str')),
    ('data.image_size=3.5', ('data.image_size', 'expected int, got float')),
    ('model.channels=4', ('model.channels', 'expected tuple, got int')),
    ('steps', ("'steps'", 'expected key=value')),
])
def test_bad_set_override(data_dir, tmp_path, item, words):
  rc, _, err = _train(data_dir, tmp_path / 'run', *TINY, '--set', item)
  _error_line(rc, err, '--set', *words)
  assert not (tmp_path / 'run').exists()


# --- run directories ----------------------------------------------------------------------


def test_existing_run_dir_is_not_overwritten(data_dir, tmp_path):
  workdir = _existing_run_dir(tmp_path)
  before = _snapshot(workdir)
  rc, _, err = _train(data_dir, workdir, *TINY)
  _error_line(rc, err, workdir, 'already exists', '--resume')
  assert _snapshot(workdir) == before


def test_existing_run_dir_untouched_by_bad_data_on_resume(data_dir, tmp_path):
  workdir = _existing_run_dir(tmp_path)
  before = _snapshot(workdir)
  missing = _slice_paths(data_dir, 'patient001')[0]
  missing.unlink()
  # --steps 6: the saved run's own count (a resume cannot shorten a run).
  rc, _, err = _train(data_dir, workdir, *TINY, '--resume', '--steps', '6')
  _error_line(rc, err, missing, 'missing')
  assert _snapshot(workdir) == before


def test_resume_without_workdir(data_dir, tmp_path):
  rc, _, err = _train(data_dir, None, *TINY, '--resume')
  _error_line(rc, err, '--resume', '--workdir')


@pytest.mark.parametrize('make', ['absent', 'empty'])
def test_resume_with_nothing_to_resume(data_dir, tmp_path, make):
  workdir = tmp_path / 'run'
  if make == 'empty':
    workdir.mkdir()
  rc, _, err = _train(data_dir, workdir, *TINY, '--resume')
  _error_line(rc, err, workdir, 'nothing to resume')
  assert workdir.exists() == (make == 'empty')
  assert not workdir.exists() or not os.listdir(workdir)


def test_resume_on_folder_that_is_not_a_run(data_dir, tmp_path):
  workdir = tmp_path / 'notes'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('not a run')
  before = _snapshot(workdir)
  try:
    rc, _, err = _train(data_dir, workdir, *TINY, '--resume')
  finally:
    assert _snapshot(workdir) == before
  _error_line(rc, err, workdir, 'nothing to resume')


def test_evaluate_missing_workdir(tmp_path):
  rc, _, err = _call(evaluate.main, ['--workdir', tmp_path / 'no_run', '--no-progress'])
  _error_line(rc, err, tmp_path / 'no_run', 'config.json', 'missing')
  assert not (tmp_path / 'no_run').exists()


def test_evaluate_damaged_config(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"experiment": "smoke", ')
  rc, _, err = _call(evaluate.main, ['--workdir', workdir, '--no-progress'])
  _error_line(rc, err, workdir / 'config.json')


# --- a good run ---------------------------------------------------------------------------


def _event_tags(path, event_pb2):
  """Scalar tags in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  data, tags, pos = path.read_bytes(), set(), 0
  while pos < len(data):
    length = int.from_bytes(data[pos:pos + 8], 'little')
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    tags |= {value.tag for value in event.summary.value}
    pos += 12 + length + 4
  return tags


def test_smoke_run_then_evaluate(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  rc, out, err = _train(data_dir, workdir, *TINY)
  assert rc == 0, err
  assert 'error' not in err
  assert f'run directory: {workdir}' in out
  for name in ('config.json', 'metrics.jsonl', 'results.md'):
    assert (workdir / name).is_file(), name
  steps = [line for line in (workdir / 'metrics.jsonl').read_text().splitlines() if line]
  assert steps, 'metrics.jsonl is empty'
  # TensorBoard-readable without TensorFlow: read the event file back with tensorboardX's reader.
  from tensorboardX.event_file_writer import event_pb2
  events = list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert len(events) == 1
  tags = _event_tags(events[0], event_pb2)
  assert {'train/loss', 'train/lr', 'train/ema_decay', 'val/dice/mean'} <= tags, tags
  results = (workdir / 'results.md').read_text()
  assert '| Class |' in results and '## val (2 volumes)' in results
  for name in ('RV', 'MYO', 'LV'):
    assert f'| {name} |' in results, results
  for kind in ('best', 'latest'):
    assert (workdir / 'checkpoints' / kind / '2').is_dir(), kind

  rc, out, err = _call(evaluate.main, ['--workdir', workdir, '--no-progress'])
  assert rc == 0, err
  report = (workdir / 'eval_val.md').read_text()
  assert 'best checkpoint (step 2)' in report and 'val split, 2 volumes' in report
  for name in ('RV', 'MYO', 'LV'):
    assert f'| {name} |' in report, report
  assert report.strip() in out
  # The run's final table reused the best checkpoint's validation pass: evaluating the saved
  # checkpoint anew gives the same numbers.
  saved = json.loads((workdir / 'results.json').read_text())['splits']['val']['summary']
  again = json.loads((workdir / 'eval_val.json').read_text())['summary']
  for metric in ('dice', 'hd95'):
    np.testing.assert_allclose(np.asarray(saved[metric]['mean'], float),
                               np.asarray(again[metric]['mean'], float), rtol=1e-6)
