"""Several processes, one run (`jax.distributed`): two CPU processes on localhost with the gloo
collectives, two host devices each, train exactly as one process with four devices; the run
resumes on two processes (after a copy cut at a checkpoint, and after a real SIGKILL of both
mid-run) and refuses one; a failure in one process stops the other.

Every launch is `python -m jaxseg.run` in subprocesses with a timeout, killed if a test fails.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 240  # a hang fails the test instead of the CI job
# The smoke experiment with a global batch of 4 (divisible by the 4 devices), 6 steps,
# checkpoints at 3 and 6.
ARGS = ['--experiment', 'smoke', '--no-progress', '--set', 'report=False',
        '--set', 'data.labeled_batch=4', '--set', 'data.unlabeled_batch=4']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir, processes: int, devices: int, *extra, per_process=None):
  """Starts `processes` jaxseg.run processes of `devices` CPU devices each; `per_process[i]`
  adds arguments to process i only."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             # Launches share compiled programs (as conftest.py does for in-process tests).
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.2')
  command = [sys.executable, '-m', 'jaxseg.run', *ARGS, '--workdir', str(workdir), *extra]
  if processes > 1:
    port = _free_port()
    commands = [command + ['--coordinator', f'localhost:{port}', '--num-processes',
                           str(processes), '--process-id', str(i)] for i in range(processes)]
  else:
    commands = [command]
  for i, more in (per_process or {}).items():
    commands[i] = commands[i] + list(more)
  return [subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True) for c in commands]


def _wait(running):
  """Waits for every process; returns [(returncode, stderr)]."""
  try:
    errors = [p.communicate(timeout=TIMEOUT)[1] for p in running]
    return [(p.returncode, err) for p, err in zip(running, errors)]
  finally:
    for p in running:  # a hang or a failed assertion leaves no process behind
      if p.poll() is None:
        p.kill()
        p.wait()


def _launch(*args, **kwargs):
  return _wait(_start(*args, **kwargs))


def _train_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  train = [r for r in rows if r['split'] == 'train']
  return [r['step'] for r in train], np.array([[r['loss'], r['supervised'], r['consistency']]
                                               for r in train])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """One process with four devices, and two processes with two devices each."""
  root = tmp_path_factory.mktemp('multihost')
  one, two = root / 'one', root / 'two'
  # At the same time: the CPU count, not the program, limits these tiny runs.
  running = _start(one, 1, 4) + _start(two, 2, 2)
  for code, err in _wait(running):
    assert code == 0, err[-3000:]
  return one, two


def test_two_processes_train_like_one_with_the_same_devices(runs):
  one, two = runs
  steps, losses = _train_losses(one)
  steps_two, losses_two = _train_losses(two)
  assert steps == steps_two == [1, 2, 3, 4, 5, 6]
  assert np.all(np.isfinite(losses)) and losses[-1, 0] != losses[0, 0]
  np.testing.assert_allclose(losses_two, losses, rtol=2e-5, atol=1e-7)
  # One run directory, written once: one validation record per evaluation, one results file.
  with open(os.path.join(two, 'metrics.jsonl')) as f:
    val_steps = [json.loads(line)['step'] for line in f if '"val"' in line]
  assert val_steps == [3, 6]
  assert os.path.isfile(os.path.join(two, 'results.json'))
  data = os.path.join(two, 'checkpoints', 'latest', '6', 'data')
  assert sorted(f for f in os.listdir(data) if f.endswith('.json')) == [
      'process_0-of-2.json', 'process_1-of-2.json']


def test_two_processes_resume_where_they_stopped_and_refuse_one(runs, tmp_path):
  one, two = runs
  # Both processes killed after the checkpoint of step 3: what they leave is that checkpoint.
  stopped = tmp_path / 'stopped'
  shutil.copytree(two, stopped)
  shutil.rmtree(stopped / 'checkpoints' / 'latest' / '6')
  (code, err), = _launch(stopped, 1, 4, '--resume')
  assert code == 2 and 'saved by 2 process(es), resumed with 1' in err, err[-2000:]
  for code, err in _launch(stopped, 2, 2, '--resume'):
    assert code == 0, err[-3000:]
  steps, losses = _train_losses(stopped)
  assert steps == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint once, not twice
  np.testing.assert_allclose(losses, _train_losses(one)[1], rtol=2e-5, atol=1e-7)


def test_an_error_in_one_process_stops_the_other_with_its_message(tmp_path):
  # Process 1 alone has a batch the mesh cannot split: it fails while process 0 goes on to the
  # first step's collective, where it would wait forever for process 1.
  results = _launch(tmp_path / 'run', 2, 1, per_process={1: ['--set', 'data.labeled_batch=3']})
  (code0, err0), (code1, err1) = results
  assert code1 == 2 and 'data.labeled_batch=3 must be divisible' in err1, err1[-2000:]
  assert code0 == 2 and 'error: process 1: data.labeled_batch=3' in err0, err0[-2000:]


def test_processes_rows_of_a_stream_make_the_one_process_batches():
  from jaxseg.data import pipeline
  # The augmentation's random draw depends on the element's place in the global stream.
  augment = lambda x, rng: int(x) * 1000 + int(rng.integers(1000))
  stream = lambda rows: pipeline.make_stream(list(range(7)), augment, seed=3, batch_size=4,
                                            read_threads=1, rows=rows)
  whole, first, second = stream(None), stream((0, 1)), stream((2, 3))
  for _ in range(5):  # past the end of the first epoch (7 elements, reshuffled)
    parts = np.concatenate([next(first), next(second)])
    np.testing.assert_array_equal(parts, next(whole))
  odd, even = stream((1, 3)), stream((0, 2))  # rows need not be contiguous
  whole = stream(None)
  for _ in range(3):
    expected, a, b = next(whole), next(even), next(odd)
    np.testing.assert_array_equal(expected[[0, 2]], a)
    np.testing.assert_array_equal(expected[[1, 3]], b)


def test_process_flags_go_together(capsys):
  from jaxseg import run
  assert run.main(['--experiment', 'smoke', '--coordinator', 'localhost:1234']) == 2
  assert '--coordinator, --num-processes and --process-id go together' in capsys.readouterr().err
  assert run.main(['--experiment', 'smoke', '--coordinator', 'localhost:1234',
                   '--num-processes', '2', '--process-id', '2']) == 2
  assert '--process-id 2 must be in [0, --num-processes 2)' in capsys.readouterr().err


def test_a_checkpoint_from_another_process_count_is_refused_before_any_work(tmp_path):
  from jaxseg.errors import ConfigError
  from jaxseg.training import checkpoint
  data = tmp_path / 'checkpoints' / 'latest' / '6' / 'data'
  data.mkdir(parents=True)
  for i in range(2):
    (data / f'process_{i}-of-2.json').write_text('{}')
  with pytest.raises(ConfigError, match=r'saved by 2 process\(es\), resumed with 1'):
    checkpoint.check_process_count(str(tmp_path))
  for i in range(2):
    (data / f'process_{i}-of-2.json').unlink()
  (data / 'process_0-of-1.json').write_text('{}')
  checkpoint.check_process_count(str(tmp_path))  # the same count: no complaint


def test_a_run_saved_before_per_process_positions_still_resumes(tmp_path):
  import orbax.checkpoint as ocp
  from jaxseg.training import checkpoint
  old = checkpoint.Checkpoints(str(tmp_path))  # saves the data positions as Orbax's JsonSave did
  state = {'w': np.arange(3.0)}
  old.latest.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({'labeled': {'next': 12}}),
      meta=ocp.args.JsonSave({'step': 3})))
  old.close()
  restored_state, data, meta = checkpoint.Checkpoints(str(tmp_path)).restore('latest', state)
  assert data == {'labeled': {'next': 12}} and meta == {'step': 3}
  np.testing.assert_array_equal(restored_state['w'], state['w'])


def test_two_processes_killed_mid_run_resume_to_the_uninterrupted_losses(tmp_path):
  # Validation at every step (process 0) widens the window between the checkpoint at 3 and the
  # end, so the kill lands mid-run; validation does not change the training losses.
  longer = ['--steps', '12', '--set', 'checkpoint.every=3']
  reference = _start(tmp_path / 'reference', 1, 4, *longer)
  killed = tmp_path / 'killed'
  running = _start(killed, 2, 2, *longer, '--set', 'eval.every=1')
  try:
    deadline = time.time() + TIMEOUT
    while not (killed / 'checkpoints' / 'latest' / '3').is_dir():
      assert all(p.poll() is None for p in running), [p.communicate()[1][-2000:] for p in running]
      assert time.time() < deadline, 'no checkpoint at step 3 in time'
      time.sleep(0.05)
  finally:
    for p in running:
      p.kill()
      p.wait()
  assert not (killed / 'results.json').exists(), 'the kill came after the run ended'
  for code, err in _wait(reference) + _launch(killed, 2, 2, '--resume'):
    assert code == 0, err[-3000:]
  steps, losses = _train_losses(killed)
  assert steps == list(range(1, 13))  # the steps after the restored checkpoint once
  np.testing.assert_allclose(losses, _train_losses(tmp_path / 'reference')[1], rtol=2e-5,
                             atol=1e-7)
