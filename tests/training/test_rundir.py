"""Runs that survive (issue 14): a resume continues the run it finds and leaves a finished one
untouched, one process per run directory, sizes refused before a directory exists, and a full
disk, a read-only folder, corrupt checkpoints and early divergence each give one `error:` line.

Kills are real: a subprocess and SIGKILL (or SIGSTOP while a second process tries the directory).
One killed-and-resumed run is shared by the tests that read it (module fixture)."""

from __future__ import annotations

import errno
import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxseg import evaluate, predict
from jaxseg.training import checkpoint, rundir
from jaxseg.training.logging import read_metrics

from conftest import call, call_run, error_line, snapshot

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 30
# The smoke experiment (32 px, 3-level U-Net), checkpoints every 3 steps, one validation at the end.
RUN = ['--steps', STEPS, '--no-progress', '--set', 'checkpoint.every=3', '--set', 'eval.every=100',
       '--set', 'report=False']


def _env(private_cache: pathlib.Path | None = None) -> dict[str, str]:
  """A subprocess sharing the tests' XLA cache (conftest.py), or a copy of it when its writes may
  be cut short (a file size limit would leave truncated entries)."""
  import jax  # noqa: PLC0415
  cache = jax.config.jax_compilation_cache_dir
  if private_cache is not None:
    if os.path.isdir(cache):
      shutil.copytree(cache, private_cache)
    else:
      private_cache.mkdir()
    cache = str(private_cache)
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.2')


def _start(workdir, *extra, script=None, env=None) -> subprocess.Popen:
  """`python -m jaxseg.run` (or `script`, given the same arguments) on the smoke run, RUN."""
  argv = ['--experiment', 'smoke', '--workdir', str(workdir), *map(str, RUN), *map(str, extra)]
  command = ([sys.executable, '-c', script] if script else [sys.executable, '-m', 'jaxseg.run'])
  return subprocess.Popen(command + argv, cwd=REPO, env=env or _env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(path: pathlib.Path, process: subprocess.Popen, timeout: float = 300) -> None:
  end = time.time() + timeout
  while not path.exists():
    if process.poll() is not None:
      raise AssertionError(f'exited {process.returncode} before {path}: {process.stderr.read()}')
    if time.time() > end:
      process.kill()
      raise AssertionError(f'{path} not written in {timeout} s')
    time.sleep(0.05)


def _train_losses(workdir) -> dict[int, float]:
  return {m['step']: m['loss'] for m in read_metrics(str(workdir)) if m['split'] == 'train'}


@pytest.fixture(scope='module')
def killed(tmp_path_factory):
  """A run SIGKILLed after its first checkpoint, tried by a second process while the first was
  stopped (holding the directory), then resumed in this process."""
  tmp = tmp_path_factory.mktemp('killed')
  workdir = tmp / 'run'
  first = _start(workdir)
  _wait_for(workdir / 'checkpoints' / 'latest' / '3', first)
  first.send_signal(signal.SIGSTOP)  # holds the directory, frozen mid-run
  try:
    second = call_run(None, workdir, *RUN, '--set', 'seed=1')
    second_resume = call_run(None, workdir, '--resume', '--no-progress')
  finally:
    first.kill()
    first.wait()
  killed_at = sorted(int(s) for s in os.listdir(workdir / 'checkpoints' / 'latest') if s.isdigit())
  resumed = call_run(None, workdir, '--resume', '--no-progress')
  return dict(workdir=workdir, pid=first.pid, second=second, second_resume=second_resume,
              killed_at=killed_at, resumed=resumed, tmp=tmp)


# --- 3. one process per run directory ----------------------------------------------------


def test_a_second_process_is_refused_while_the_first_holds_the_run(killed):
  for rc, _, err in (killed['second'], killed['second_resume']):
    error_line(rc, err, killed['workdir'], 'in use by another jaxseg process',
               f'pid {killed["pid"]}')


def test_lock_refuses_another_process_and_dies_with_its_holder(tmp_path):
  """The race the early check cannot see: two runs that both found the directory free."""
  holder = subprocess.Popen(
      [sys.executable, '-c', textwrap.dedent(f'''
          import sys, time
          from jaxseg.training import rundir
          with rundir.hold({str(tmp_path)!r}):
            print('held', flush=True)
            time.sleep(600)''')],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(rundir.RunInUse, match=f'pid {holder.pid}'):
      with rundir.hold(str(tmp_path)):
        pass
    assert rundir.holder(str(tmp_path)) == str(holder.pid)
  finally:
    holder.kill()
    holder.wait()
  assert rundir.holder(str(tmp_path)) is None  # the kernel released it with the process
  with rundir.hold(str(tmp_path)):
    pass


# --- 1. --resume continues the run it finds ------------------------------------------------


def test_resume_after_sigkill_continues_to_the_runs_own_step_count(killed, tmp_path):
  rc, out, err = killed['resumed']
  assert rc == 0, err
  start = killed['killed_at'][-1]
  assert f'resumed from step {start} of {STEPS}' in out
  workdir = killed['workdir']
  assert json.loads((workdir / 'config.json').read_text())['steps'] == STEPS
  results = json.loads((workdir / 'results.json').read_text())
  assert results['steps'] == STEPS and results['resumed_from'] == start
  losses = _train_losses(workdir)
  assert sorted(losses) == list(range(1, STEPS + 1))
  # The same losses as a run never killed.
  rc, _, err = call_run(None, tmp_path / 'straight', *RUN)
  assert rc == 0, err
  straight = _train_losses(tmp_path / 'straight')
  np.testing.assert_array_equal([losses[s] for s in range(start + 1, STEPS + 1)],
                                [straight[s] for s in range(start + 1, STEPS + 1)])


# --- 2. a finished run is left untouched; --steps extends it -------------------------------


def test_finished_run_is_reported_and_untouched_and_steps_extend_it(killed):
  workdir = killed['tmp'] / 'finished'
  shutil.copytree(killed['workdir'], workdir)
  before = snapshot(workdir)
  for _ in range(2):
    rc, out, err = call_run(None, workdir, '--resume', '--no-progress')
    assert rc == 0, err
    assert f'the run finished all {STEPS} steps; nothing to do' in out
  assert snapshot(workdir) == before

  rc, _, err = call_run(None, workdir, '--resume', '--no-progress', '--steps', STEPS - 1)
  error_line(rc, err, f'--steps {STEPS - 1}', f'shorter than the {STEPS} steps')
  assert snapshot(workdir) == before

  rc, out, err = call_run(None, workdir, '--resume', '--no-progress', '--steps', STEPS + 2)
  assert rc == 0, err
  assert f'extending the run from {STEPS} to {STEPS + 2} steps' in out
  assert f'resumed from step {STEPS} of {STEPS + 2}' in out
  assert json.loads((workdir / 'config.json').read_text())['steps'] == STEPS + 2
  assert sorted(_train_losses(workdir)) == list(range(1, STEPS + 3))


# --- 8. killed during the very first checkpoint write ---------------------------------------

KILL_IN_FIRST_SAVE = textwrap.dedent('''
    import os, signal, sys
    from orbax.checkpoint._src.path import atomicity
    from jaxseg import run
    # Die once the first checkpoint is written to its temporary folder, before Orbax renames it.
    async def die(self, *args, **kwargs):
      os.kill(os.getpid(), signal.SIGKILL)
    atomicity.AtomicRenameTemporaryPath.finalize = die
    sys.exit(run.main(sys.argv[1:]))
''')


def test_kill_during_the_first_checkpoint_write_resumes_from_step_0(tmp_path):
  workdir = tmp_path / 'run'
  first = _start(workdir, script=KILL_IN_FIRST_SAVE)
  first.communicate(timeout=300)
  assert first.returncode == -signal.SIGKILL
  latest = workdir / 'checkpoints' / 'latest'
  assert not [s for s in os.listdir(latest) if s.isdigit()]  # no finished checkpoint
  assert glob.glob(str(latest / '3.orbax-checkpoint-tmp*'))  # a half-written one
  rc, out, err = call_run(None, workdir, '--resume', '--no-progress')
  assert rc == 0, err
  assert 'no checkpoint was saved before the run stopped; starting again from step 0' in out
  assert json.loads((workdir / 'results.json').read_text())['steps'] == STEPS
  assert sorted(_train_losses(workdir)) == list(range(1, STEPS + 1))
  assert not glob.glob(str(workdir / 'checkpoints' / '*' / '*.orbax-checkpoint-tmp*'))


# --- 4. divergence before the first checkpoint ----------------------------------------------


def test_divergence_before_the_first_checkpoint_keeps_config_and_logs(tmp_path):
  workdir = tmp_path / 'run'
  rc, _, err = call_run(None, workdir, '--no-progress', '--set', 'optimizer.lr=1e6',
                        '--steps', 20, '--set', 'checkpoint.every=10', '--set', 'report=False')
  line = error_line(rc, err, workdir, 'loss became', 'last finite loss',
                    'no checkpoint was saved yet', 'metrics.jsonl')
  assert 'step None' not in line
  assert (workdir / 'config.json').is_file()
  logged = read_metrics(str(workdir))
  assert logged and logged[-1]['loss'] is None  # the bad step, for diagnosis


# --- 5. sizes refused before a run directory exists ------------------------------------------


@pytest.mark.parametrize('item, words', [
    ('data.labeled_batch=0', ('data.labeled_batch=0', 'positive')),
    ('data.unlabeled_batch=-2', ('data.unlabeled_batch=-2', 'positive')),
    ('checkpoint.every=0', ('checkpoint.every=0', 'positive')),
    ('steps=0', ('steps=0', 'positive')),
    # The smoke U-Net halves its input twice.
    ('data.image_size=30', ('data.image_size=30', 'multiple of 4', 'use 28 or 32')),
    ('eval.patch_size=34', ('eval.patch_size=34', 'multiple of 4', 'use 32 or 36')),
])
def test_bad_sizes_refused_before_the_run_directory_exists(tmp_path, item, words):
  rc, _, err = call_run(None, tmp_path / 'run', '--no-progress', '--set', item)
  error_line(rc, err, *words)
  assert not (tmp_path / 'run').exists()


# --- 6. full disk and read-only folders -------------------------------------------------------


# A file size limit below a checkpoint file (40 kB), set by the process on itself before JAX starts
# threads; a write past it fails with EFBIG instead of raising SIGXFSZ.
LIMITED_FILE_SIZE = textwrap.dedent('''
    import resource, runpy, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    runpy.run_module('jaxseg.run', run_name='__main__')
''')


def test_a_real_write_failure_in_a_checkpoint_is_one_line(tmp_path):
  """A file size limit makes TensorStore's writes fail as a full disk does (no root needed)."""
  workdir = tmp_path / 'run'
  process = _start(workdir, script=LIMITED_FILE_SIZE,
                   env=_env(private_cache=tmp_path / 'xla-cache'))
  _, err = process.communicate(timeout=300)
  error_line(process.returncode, err, workdir / 'checkpoints', 'cannot write',
             'file size limit', 'checkpoint 3 not saved')
  noise = ('Traceback', 'ERROR:', 'Exception ignored')
  assert not any(word in err for word in noise), err[-3000:]
  # It failed before any checkpoint existed: nothing half-written is left, nor the run.
  assert not workdir.exists()


def test_full_disk_at_a_later_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
  save = ocp.CheckpointManager.save

  def full_at_step_6(self, step, *args, **kwargs):
    if step == 6:  # half-written, then TensorStore's error as it reports ENOSPC
      partial = pathlib.Path(self.directory) / '6.orbax-checkpoint-tmp-1'
      (partial / 'state').mkdir(parents=True)
      (partial / 'state' / 'd').write_bytes(b'\0' * 100)
      raise ValueError(f'OUT_OF_RANGE: Error writing local file "{partial}/state/d": Failed to '
                       "write 4096 bytes to file 9: No space left on device [os_error_code='28']")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_at_step_6)
  workdir = tmp_path / 'run'
  rc, _, err = call_run(None, workdir, *RUN)
  error_line(rc, err, workdir / 'checkpoints' / 'latest', 'no space left on the disk',
             'checkpoint 6 not saved; checkpoint 3 is kept')
  latest = workdir / 'checkpoints' / 'latest'
  assert sorted(os.listdir(latest)) == ['3']
  monkeypatch.undo()
  from jaxseg import config as config_lib  # noqa: PLC0415
  from jaxseg.models import build_model  # noqa: PLC0415
  from jaxseg.training import schedules, step as step_lib  # noqa: PLC0415
  config = config_lib.read_run_config(str(workdir))
  template = step_lib.abstract_state(build_model(config), schedules.optimizer(config), config)
  state, _, meta = checkpoint.Checkpoints(str(workdir), create=False).restore('latest', template)
  assert meta['step'] == 3 and int(state.step) == 3


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
  read_only = tmp_path / 'ro'
  makedirs = os.makedirs

  def refuse(path, *args, **kwargs):
    if str(path).startswith(str(read_only)):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return makedirs(path, *args, **kwargs)

  monkeypatch.setattr(os, 'makedirs', refuse)
  rc, _, err = call_run(None, read_only / 'run', *RUN)
  error_line(rc, err, read_only, 'cannot write (read-only file system)', '--workdir')


def test_storage_error_reads_errno_and_tensorstore_text():
  error = rundir.storage_error(OSError(errno.ENOSPC, 'No space left on device', '/x/y.json'), '/w')
  assert str(error) == ('/x: cannot write (no space left on the disk); free some space or '
                        'choose a --workdir on another disk')
  wrapped = RuntimeError('commit failed')
  wrapped.__cause__ = ValueError('Failed to write: Read-only file system [os_error_code=30]')
  assert 'read-only file system' in str(rundir.storage_error(wrapped, '/w'))
  assert rundir.storage_error(ValueError('shape mismatch'), '/w') is None


# --- 7. corrupt and missing checkpoints -------------------------------------------------------


def _copy_run(killed, name) -> pathlib.Path:
  workdir = killed['tmp'] / name
  shutil.copytree(killed['workdir'], workdir)
  return workdir


def _h5_input(folder: pathlib.Path) -> pathlib.Path:
  folder.mkdir()
  with h5py.File(folder / 'case.h5', 'w') as f:
    f.create_dataset('image', data=np.zeros((2, 32, 32), np.float32))
  return folder / 'case.h5'


def test_truncated_checkpoint_metadata_names_it_and_the_usable_ones(killed, tmp_path):
  workdir = _copy_run(killed, 'bad_metadata')
  best = workdir / 'checkpoints' / 'best' / str(STEPS)
  (best / 'state' / '_METADATA').write_bytes((best / 'state' / '_METADATA').read_bytes()[:100])
  latest = sorted(int(s) for s in os.listdir(workdir / 'checkpoints' / 'latest'))
  usable = ', '.join(f'latest {s}' for s in latest)
  rc, _, err = call(evaluate.main, ['--workdir', workdir, '--no-progress'])
  error_line(rc, err, best, 'best checkpoint unreadable', f'still usable: {usable}')
  image = _h5_input(tmp_path / 'in')
  rc, _, err = call(predict.main, ['--workdir', workdir, '--input', image, '--output',
                                   tmp_path / 'out', '--no-progress'])
  error_line(rc, err, best, 'best checkpoint unreadable', f'still usable: {usable}')


def test_truncated_checkpoint_data_file_is_one_line(killed):
  """In a process of its own: TensorStore's failures also print from its threads at exit."""
  workdir = _copy_run(killed, 'bad_data')
  best = workdir / 'checkpoints' / 'best' / str(STEPS)
  data_file = max((best / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  data_file.write_bytes(data_file.read_bytes()[:1000])
  out = subprocess.run([sys.executable, '-m', 'jaxseg.evaluate', '--workdir', str(workdir),
                        '--no-progress'], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
  error_line(out.returncode, out.stderr, best, 'best checkpoint unreadable', 'still usable')
  assert not any(noise in out.stderr for noise in ('Traceback', 'ERROR:', 'Exception ignored',
                                                   'Event loop is closed')), out.stderr[-3000:]


def test_missing_checkpoints_folder_is_called_missing(killed, tmp_path):
  workdir = _copy_run(killed, 'no_checkpoints')
  shutil.rmtree(workdir / 'checkpoints')
  image = _h5_input(tmp_path / 'in')
  rc, _, err = call(predict.main, ['--workdir', workdir, '--input', image, '--output',
                                   tmp_path / 'out', '--no-progress'])
  line = error_line(rc, err, workdir / 'checkpoints', 'missing (moved or deleted?)')
  assert 'saved no checkpoint' not in line
  rc, _, err = call(evaluate.main, ['--workdir', workdir, '--no-progress'])
  error_line(rc, err, workdir / 'checkpoints', 'missing')

