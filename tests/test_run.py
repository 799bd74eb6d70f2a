"""`python -m jaxseg.run`: bad input gives one `error:` line and exit 2 without touching a run
directory; a smoke run on an SSL4MIS-layout folder works end to end; the report is written after
training (`train_and_report`), not when the config turns it off, and not again for nothing new."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import evaluate, report, run
from jaxseg.training import loop

from conftest import (call, call_run, error_line, rewrite_h5, snapshot, tiny_config,
                      write_ssl4mis_tree)

TRAIN = ('patient001', 'patient002')  # train_slices.list, in this order
VAL = ('patient003',)  # val.list
# Keeps a run that must start tiny: 2 steps at 32 px, a 3-level U-Net, one validation.
TINY = ['--steps', '2', '--labeled-num', '1', '--no-progress',
        '--set', 'data.image_size=32', '--set', 'model.channels=(4,8,16)',
        '--set', 'model.dropout=(0.0,0.1,0.2)', '--set', 'eval.patch_size=32',
        '--set', 'eval.every=2', '--set', 'data.labeled_batch=2',
        '--set', 'data.unlabeled_batch=2', '--set', 'checkpoint.every=2']


def _ssl4mis_tree(root: pathlib.Path) -> pathlib.Path:
  """`train_slices.list`, `val.list`, `data/<vol>.h5` and `data/slices/<vol>_slice_<z>.h5`."""
  return write_ssl4mis_tree(root, {'train': TRAIN, 'val': VAL})


def _slice_paths(root: pathlib.Path, patient: str) -> list[pathlib.Path]:
  return sorted((root / 'data' / 'slices').glob(f'{patient}_*.h5'))


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  return _ssl4mis_tree(tmp_path / 'ACDC')


def _existing_run_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  workdir = tmp_path / 'old_run'
  (workdir / 'checkpoints').mkdir(parents=True)
  config = config_lib.load_experiment('smoke', 'cpu')
  (workdir / 'config.json').write_text(config_lib.to_json(config))
  (workdir / 'metrics.jsonl').write_text('{"step": 1, "loss": 0.5}\n')
  (workdir / 'checkpoints' / 'note.txt').write_text('keep me')
  return workdir


# --- bad data found before anything runs ------------------------------------------------


def test_steps_with_the_quick_profile_is_its_budget(tmp_path):
  """`--steps` with `--profile quick` scales the schedules to the new budget; with `paper` it
  sets the step count alone, the paper's schedules kept."""
  common = ['--experiment', 'acdc_plgcl', '--data-dir', str(tmp_path), '--steps', '3000']
  quick, _ = run.resolve_config(run.parse_args(common + ['--profile', 'quick']))
  assert (config_lib.total_steps(quick), quick.plgcl.warmup_steps, quick.ema.decay) == (
      3000, 735, pytest.approx(0.99))
  paper, _ = run.resolve_config(run.parse_args(common + ['--profile', 'paper']))
  assert (config_lib.total_steps(paper), paper.plgcl.warmup_steps) == (3000, 7350)


def test_data_dir_does_not_exist(tmp_path):
  rc, _, err = call_run(tmp_path / 'nowhere', tmp_path / 'run', *TINY)
  error_line(rc, err, tmp_path / 'nowhere', 'does not exist')
  assert not (tmp_path / 'run').exists()


def test_unknown_layout(tmp_path):
  folder = tmp_path / 'stuff'
  folder.mkdir()
  (folder / 'README').write_text('not a dataset')
  rc, _, err = call_run(folder, tmp_path / 'run', *TINY)
  error_line(rc, err, folder, 'unknown data layout', 'train_slices.list')
  assert not (tmp_path / 'run').exists()


def test_listed_slice_missing(data_dir, tmp_path):
  missing = _slice_paths(data_dir, 'patient002')[1]
  missing.unlink()
  rc, _, err = call_run(data_dir, tmp_path / 'run', *TINY)
  error_line(rc, err, missing, 'train_slices.list', 'missing')
  assert not (tmp_path / 'run').exists()


def test_listed_volume_missing(data_dir, tmp_path):
  missing = data_dir / 'data' / 'patient003_frame02.h5'
  missing.unlink()
  rc, _, err = call_run(data_dir, tmp_path / 'run', *TINY)
  error_line(rc, err, missing, 'val.list', 'missing')
  assert not (tmp_path / 'run').exists()


def test_val_list_missing(data_dir, tmp_path):
  (data_dir / 'val.list').unlink()
  rc, _, err = call_run(data_dir, tmp_path / 'run', *TINY)
  error_line(rc, err, data_dir / 'val.list', 'missing')
  assert not (tmp_path / 'run').exists()


def test_labeled_num_larger_than_the_training_set(data_dir, tmp_path):
  rc, _, err = call_run(data_dir, tmp_path / 'run', *TINY, '--labeled-num', '3')
  error_line(rc, err, 'train_slices.list', '--labeled-num 3', 'between 1 and 2')
  assert not (tmp_path / 'run').exists()


# --- bad slices, read lazily by the training stream -------------------------------------


def _corrupt(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _label_five(label):
  label[0, 0] = 5
  return label


def _nan(image):
  image[3, 4] = np.nan
  return image


# (damage, patient whose every slice is damaged, words the message must hold). With
# --labeled-num 1, patient001 feeds the labeled stream and patient002 the unlabeled one, so
# the first batch of that stream reads a damaged file whatever the shuffle.
LAZY_CASES = {
    'truncated': (_corrupt, 'patient001', ('not a readable HDF5', 'corrupt or truncated')),
    'label_5': (lambda p: rewrite_h5(p, 'label', _label_five), 'patient001',
                ('label values [5] outside 0..3',)),
    'shape_mismatch': (lambda p: rewrite_h5(p, 'label', lambda label: label[:, :-2]),
                       'patient001', ('label shape (24, 18) differs from image shape (24, 20)',)),
    'nan_unlabeled': (lambda p: rewrite_h5(p, 'image', _nan), 'patient002', ('1 NaN',)),
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
    rc, _, err = call_run(root, tmp / 'run', *TINY)
    results[case] = (rc, err, damaged, tmp / 'run')
  return results


@pytest.mark.parametrize('case', sorted(LAZY_CASES))
def test_bad_slice_is_named_with_exit_2(lazy_results, case):
  rc, err, damaged, _ = lazy_results[case]
  line = error_line(rc, err, *LAZY_CASES[case][2])
  named = line[len('error: '):].split(': ', 1)[0]
  assert named in {str(p) for p in damaged}, line


@pytest.mark.parametrize('case', sorted(LAZY_CASES))
def test_bad_slice_leaves_no_run_dir(lazy_results, case):
  rc, _, _, workdir = lazy_results[case]
  assert rc == 2
  assert not workdir.exists(), sorted(os.listdir(workdir))


# --- bad arguments ------------------------------------------------------------------------


def test_unknown_experiment(data_dir, tmp_path):
  rc, _, err = call_run(data_dir, tmp_path / 'run', *TINY, experiment='no_such_method')
  error_line(rc, err, "'no_such_method'", 'unknown experiment', 'smoke')
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
  rc, _, err = call_run(data_dir, tmp_path / 'run', *TINY, '--set', item)
  error_line(rc, err, '--set', *words)
  assert not (tmp_path / 'run').exists()


# --- run directories ----------------------------------------------------------------------


def test_existing_run_dir_is_not_overwritten(data_dir, tmp_path):
  workdir = _existing_run_dir(tmp_path)
  before = snapshot(workdir)
  rc, _, err = call_run(data_dir, workdir, *TINY)
  error_line(rc, err, workdir, 'already exists', '--resume')
  assert snapshot(workdir) == before


def test_existing_run_dir_untouched_by_bad_data_on_resume(data_dir, tmp_path):
  workdir = _existing_run_dir(tmp_path)
  before = snapshot(workdir)
  missing = _slice_paths(data_dir, 'patient001')[0]
  missing.unlink()
  # --steps 6: the saved run's own count (a resume cannot shorten a run).
  rc, _, err = call_run(data_dir, workdir, *TINY, '--resume', '--steps', '6')
  error_line(rc, err, missing, 'missing')
  assert snapshot(workdir) == before


def test_resume_without_workdir(data_dir, tmp_path):
  rc, _, err = call_run(data_dir, None, *TINY, '--resume')
  error_line(rc, err, '--resume', '--workdir')


@pytest.mark.parametrize('make', ['absent', 'empty'])
def test_resume_with_nothing_to_resume(data_dir, tmp_path, make):
  workdir = tmp_path / 'run'
  if make == 'empty':
    workdir.mkdir()
  rc, _, err = call_run(data_dir, workdir, *TINY, '--resume')
  error_line(rc, err, workdir, 'nothing to resume')
  assert workdir.exists() == (make == 'empty')
  assert not workdir.exists() or not os.listdir(workdir)


def test_resume_on_folder_that_is_not_a_run(data_dir, tmp_path):
  workdir = tmp_path / 'notes'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('not a run')
  before = snapshot(workdir)
  try:
    rc, _, err = call_run(data_dir, workdir, *TINY, '--resume')
  finally:
    assert snapshot(workdir) == before
  error_line(rc, err, workdir, 'nothing to resume')


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
  rc, out, err = call_run(data_dir, workdir, *TINY)
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

  rc, out, err = call(evaluate.main, ['--workdir', workdir, '--no-progress'])
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


# --- train, then report --------------------------------------------------------------------


@pytest.fixture
def fake_training(monkeypatch):
  """Training stubbed (it writes config.json and results.json as a finished run does) and the
  report recorded: [workdir of each report written]."""
  reports = []

  def train_and_evaluate(config, workdir, *, resume, progress, steps):
    del progress, steps
    if resume:  # a finished run: its results are given back, untouched
      return json.loads((pathlib.Path(workdir) / 'results.json').read_text())
    os.makedirs(workdir, exist_ok=True)
    (pathlib.Path(workdir) / 'config.json').write_text(config_lib.to_json(config))
    (pathlib.Path(workdir) / 'results.json').write_text(json.dumps({'steps': config.steps}))
    return {'steps': config.steps}

  def write_report(workdir, progress):
    del progress
    reports.append(workdir)
    (pathlib.Path(workdir) / 'report').mkdir(exist_ok=True)
    (pathlib.Path(workdir) / 'report' / 'report.md').write_text('# Report\n')
    return os.path.join(workdir, 'report', 'report.md')

  monkeypatch.setattr(loop, 'train_and_evaluate', train_and_evaluate)
  monkeypatch.setattr(report, 'write_report', write_report)
  return reports


def test_the_report_follows_training_unless_turned_off(fake_training, tmp_path):
  config = tiny_config()
  with config.unlocked():
    config.report = True
  results = run.train_and_report(config, str(tmp_path / 'on'), progress=False)
  assert results == {'steps': config.steps}
  assert fake_training == [str(tmp_path / 'on')]
  # Resumed with nothing trained since: the report it has is kept.
  run.train_and_report(config, str(tmp_path / 'on'), resume=True, progress=False)
  assert fake_training == [str(tmp_path / 'on')]
  # Trained since (results newer than the report): written again.
  os.utime(tmp_path / 'on' / 'report' / 'report.md', (0, 0))
  run.train_and_report(config, str(tmp_path / 'on'), resume=True, progress=False)
  assert fake_training == [str(tmp_path / 'on')] * 2
  with config.unlocked():
    config.report = False
  run.train_and_report(config, str(tmp_path / 'off'), progress=False)
  assert fake_training == [str(tmp_path / 'on')] * 2
  assert not (tmp_path / 'off' / 'report').exists()


def test_a_failed_report_warns_and_keeps_the_results(fake_training, monkeypatch, tmp_path, capsys):
  def broken(workdir, progress):
    raise ValueError('no figure today')
  monkeypatch.setattr(report, 'write_report', broken)
  config = tiny_config()
  with config.unlocked():
    config.report = True
  results = run.train_and_report(config, str(tmp_path / 'run'), progress=False)
  assert results == {'steps': config.steps}
  out = capsys.readouterr().out
  assert 'warning: ' in out and 'report not written (ValueError: no figure today)' in out
  assert f'python -m jaxseg.report --workdir {tmp_path / "run"}' in out
