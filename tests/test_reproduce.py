"""`jaxseg.reproduce`: the plan of runs, their command lines, the tables' numbers, and a real
reproduction of two methods x two seeds on a tiny ACDC folder that is killed and resumed."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_ssl4mis_tree
from jaxseg import compare
from jaxseg import config as config_lib
from jaxseg import reproduce
from jaxseg import run as run_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _args(**kw):
  defaults = dict(suite='acdc', methods=None, seeds='0,1', workdir='W', data_dir='/data',
                  labeled_num=7, profile='quick', steps=None, set=[], no_progress=True,
                  table_only=False, export=None)
  return argparse.Namespace(**{**defaults, **kw})


def test_plan_is_seed_major_and_reads_each_runs_state(tmp_path):
  methods = reproduce.select_methods('acdc', 'supervised,plgcl')
  runs = reproduce.plan(methods, [0, 1], str(tmp_path))
  assert [(r.method.name, r.seed) for r in runs] == [
      ('supervised', 0), ('plgcl', 0), ('supervised', 1), ('plgcl', 1)]
  assert runs[1].workdir == str(tmp_path / 'plgcl' / 'seed_0')
  assert [r.status() for r in runs] == ['new'] * 4
  os.makedirs(runs[0].workdir)
  pathlib.Path(runs[0].workdir, 'config.json').write_text('{}')
  assert runs[0].status() == 'partial'
  pathlib.Path(runs[0].workdir, 'results.json').write_text('{}')
  assert runs[0].status() == 'finished'


def test_command_lines(tmp_path):
  methods = {m.name: m for m in reproduce.SUITES['acdc']}
  args = _args(workdir=str(tmp_path), set=['eval.every=50'], steps=10)
  run = reproduce.Run(methods['plgcl_no_plgcl'], 1, str(tmp_path / 'a'))
  cmd = reproduce.run_command(run, args)
  assert cmd[1:5] == ['-m', 'jaxseg.run', '--experiment', 'acdc_plgcl']
  assert cmd[cmd.index('--labeled-num') + 1] == '7'
  assert cmd[cmd.index('--profile') + 1] == 'quick'
  assert cmd[cmd.index('--steps') + 1] == '10'
  sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == '--set']
  # The method's own override, then the user's, then the seed: later ones win.
  assert sets == ["losses=('supervised','mean_teacher')", 'eval.every=50', 'seed=1']
  assert '--resume' not in cmd
  # The fully supervised bound ignores --labeled-num; a run with a config.json is resumed.
  full = reproduce.Run(methods['fullysupervised'], 0, str(tmp_path / 'b'))
  os.makedirs(full.workdir)
  pathlib.Path(full.workdir, 'config.json').write_text('{}')
  cmd = reproduce.run_command(full, args)
  assert '--labeled-num' not in cmd and cmd[-2:] == ['--resume', '--no-progress']


def test_every_suite_method_resolves_its_quick_config(tmp_path):
  """Through the command line the runner writes: one budget for every method, controls whose
  overrides drop stages included."""
  for method in reproduce.SUITES['acdc']:
    run = reproduce.Run(method, 0, str(tmp_path / method.name))
    cmd = reproduce.run_command(run, _args(data_dir=str(tmp_path)))
    config, _ = run_lib.resolve_config(run_lib.parse_args(cmd[3:]))
    # One budget, image size, batch and validation cadence for every method.
    assert config_lib.total_steps(config) == config_lib.QUICK_STEPS, method
    assert config.data.image_size == config_lib.QUICK_IMAGE_SIZE, method
    assert config.eval.every == config_lib.QUICK_EVAL_EVERY, method
    for name in config.stage_order:
      stage = config_lib.stage_config(config, name)
      assert stage.data.labeled_batch == config_lib.QUICK_BATCH, (method, name)
  no_plgcl = config_lib.load_experiment('acdc_plgcl', 'quick')
  config_lib.apply_overrides(no_plgcl, list(reproduce.SUITES['acdc'][4].overrides))
  assert tuple(no_plgcl.losses) == ('supervised', 'mean_teacher')
  # The controls train their method's supervised stage alone, with that stage's recipe.
  methods = {m.name: m for m in reproduce.SUITES['acdc']}
  for name, stage, lr in (('lclpl_labeled_only', 'supervised', 1e-3),
                          ('hu_labeled_only', 'finetune', 5e-4)):
    cmd = reproduce.run_command(reproduce.Run(methods[name], 0, str(tmp_path / 'c')),
                                _args(data_dir=str(tmp_path)))
    config, _ = run_lib.resolve_config(run_lib.parse_args(cmd[3:]))
    assert tuple(config.stage_order) == (stage,), name
    only = config_lib.stage_config(config, stage)
    assert (only.steps, tuple(only.losses), only.optimizer.lr) == (
        config_lib.QUICK_STEPS, ('supervised',), lr), name


@pytest.mark.parametrize('argv, words', [
    (['--suite', 'nope'], ['--suite', 'nope', 'acdc']),
    (['--suite', 'acdc', '--methods', 'plgcl,foo'], ['foo', 'plgcl_no_plgcl']),
    (['--suite', 'acdc', '--seeds', '0,x'], ['--seeds']),
    (['--suite', 'acdc', '--seeds', '1,1'], ['distinct']),
    (['--suite', 'acdc', '--data-dir', '/no/such/folder'], ['/no/such/folder', 'does not exist']),
])
def test_bad_arguments_give_one_error_line(tmp_path, capsys, argv, words):
  assert reproduce.main(argv + ['--workdir', str(tmp_path / 'w')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ')
  for word in words:
    assert word in err[0]
  assert not (tmp_path / 'w').exists()


def _fake_run(workdir: pathlib.Path, experiment: str, seed: int, dice: list[float]) -> None:
  """A finished run whose validation volumes have the given mean foreground Dice."""
  config = config_lib.load_experiment(experiment, 'cpu')
  config.seed = seed
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(config_lib.to_json(config))
  per_volume = [{'dice': [d] * 3, 'jaccard': [d / (2 - d)] * 3, 'hd95': [1.0] * 3,
                 'asd': [0.5] * 3} for d in dice]
  (workdir / 'results.json').write_text(json.dumps({
      'steps': 7, 'train_wall_seconds': 60.0,
      'splits': {'val': {'per_volume': per_volume}}}))


def test_table_is_mean_and_std_over_seeds_of_each_runs_volume_mean(tmp_path):
  methods = reproduce.select_methods('acdc', 'supervised,meanteacher')
  runs = reproduce.plan(methods, [0, 1], str(tmp_path))
  dice = {('supervised', 0): [0.5, 0.7], ('supervised', 1): [0.7, 0.9],
          ('meanteacher', 0): [0.8, 0.8], ('meanteacher', 1): [0.6, 0.6]}
  for run in runs:
    _fake_run(pathlib.Path(run.workdir), run.method.experiment, run.seed,
              dice[run.method.name, run.seed])
  out = reproduce.tables(runs, str(tmp_path / 'comparison'))
  assert set(out) == {'val'}  # no test split in these runs
  rows = {line.split('|')[1].strip(): line.split('|')[2:] for line in out['val'].splitlines()
          if line.startswith('| supervised') or line.startswith('| meanteacher')}
  # supervised: volume means 0.6 and 0.8 -> 70.00 ± 10.00; mean teacher: 0.8, 0.6 -> the same.
  for name in ('supervised', 'meanteacher'):
    cells = [c.strip() for c in rows[name]]
    assert cells[1] == '2'  # seeds
    assert cells[2] == '70.00 ± 10.00', cells
  csv_text = (tmp_path / 'comparison_val.csv').read_text()
  assert 'supervised' in csv_text and 'meanteacher' in csv_text


def test_table_only_prints_the_finished_runs_and_trains_nothing(tmp_path, capsys):
  runs = reproduce.plan(reproduce.select_methods('acdc', 'supervised'), [0], str(tmp_path))
  _fake_run(pathlib.Path(runs[0].workdir), 'acdc_supervised', 0, [0.6, 0.8])
  argv = ['--suite', 'acdc', '--methods', 'supervised,meanteacher', '--seeds', '0',
          '--workdir', str(tmp_path), '--table-only']
  assert reproduce.main(argv) == 0
  out = capsys.readouterr().out
  row = next(line for line in out.splitlines() if line.startswith('| supervised'))
  assert '70.00 ± 10.00' in row
  assert '1 of 2 runs unfinished: meanteacher seed 0' in out
  assert not (tmp_path / 'meanteacher').exists()  # nothing started
  assert not (tmp_path / 'reproduce.json').exists()  # the training command's record is kept


def test_exported_records_reprint_the_table_and_are_never_overwritten(tmp_path, capsys):
  work, records = tmp_path / 'work', tmp_path / 'records'
  runs = reproduce.plan(reproduce.select_methods('acdc', 'supervised,meanteacher'), [0],
                        str(work))
  _fake_run(pathlib.Path(runs[0].workdir), 'acdc_supervised', 0, [0.6, 0.8])
  pathlib.Path(runs[0].workdir, 'metrics.jsonl').write_text('{"step": 10, "loss": 1.0}\n')
  pathlib.Path(runs[0].workdir, 'checkpoints').mkdir()
  os.makedirs(runs[1].workdir)  # unfinished: not exported
  pathlib.Path(runs[1].workdir, 'config.json').write_text('{}')
  argv = ['--suite', 'acdc', '--methods', 'supervised', '--seeds', '0', '--table-only']
  assert reproduce.main([*argv, '--workdir', str(work), '--export', str(records)]) == 0
  table = capsys.readouterr().out
  assert sorted(p.name for p in (records / 'supervised' / 'seed_0').iterdir()) == [
      'config.json', 'metrics.jsonl', 'results.json']
  assert not (records / 'meanteacher').exists()
  # Exporting the same runs again, or a workdir onto itself, is a no-op.
  assert reproduce.export_records(runs, str(work), str(records)) == 1
  assert reproduce.export_records(runs, str(work), str(work)) == 0
  # The records alone print the same row, once the workdir is gone.
  shutil.rmtree(work)
  assert reproduce.main([*argv, '--workdir', str(records)]) == 0
  def supervised_row(text):
    return next(line for line in text.splitlines() if line.startswith('| supervised'))
  assert supervised_row(capsys.readouterr().out) == supervised_row(table)
  # Another run under the same name is refused, and the record kept.
  _fake_run(work / 'supervised' / 'seed_0', 'acdc_supervised', 0, [0.1, 0.2])
  before = (records / 'supervised' / 'seed_0' / 'results.json').read_text()
  assert reproduce.main([*argv, '--workdir', str(work), '--export', str(records)]) == 2
  assert 'already exported with other content' in capsys.readouterr().err
  assert (records / 'supervised' / 'seed_0' / 'results.json').read_text() == before


def test_refuses_to_reuse_runs_made_with_other_settings(tmp_path, capsys):
  runs = reproduce.plan(reproduce.select_methods('acdc', 'supervised'), [0, 1], str(tmp_path))
  for run in runs:
    _fake_run(pathlib.Path(run.workdir), 'acdc_supervised', run.seed, [0.5])
  args = _args(workdir=str(tmp_path), data_dir='', labeled_num=None, profile=None)
  reproduce.check_settings(runs, args)  # the phantom's cpu profile, as the runs were made
  with pytest.raises(reproduce.ConfigError, match=r'2 run\(s\).*steps 1000 -> 30'):
    reproduce.check_settings(runs, _args(workdir=str(tmp_path), data_dir='', labeled_num=None,
                                         profile=None, steps=30))
  stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.json')}
  argv = ['--suite', 'acdc', '--methods', 'supervised', '--seeds', '0,1', '--workdir',
          str(tmp_path), '--set', 'optimizer.lr=0.02']
  assert reproduce.main(argv) == 2
  assert 'optimizer.lr 0.01 -> 0.02' in capsys.readouterr().err
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.json')} == stamps


# --- a real reproduction, killed and resumed ------------------------------------------------

TINY = ['--set', 'data.image_size=32', '--set', 'model.channels=(4,8,16)',
        '--set', 'model.dropout=(0.0,0.1,0.2)', '--set', 'eval.patch_size=32',
        '--set', 'eval.every=2', '--set', 'data.labeled_batch=2',
        '--set', 'data.unlabeled_batch=2', '--set', 'checkpoint.every=2',
        '--set', 'report=False']


def _runner(data_dir, workdir, **popen):
  argv = [sys.executable, '-m', 'jaxseg.reproduce', '--suite', 'acdc',
          '--methods', 'supervised,meanteacher', '--seeds', '0,1', '--data-dir', str(data_dir),
          '--labeled-num', '1', '--profile', 'quick', '--steps', '6', '--workdir', str(workdir),
          '--no-progress', *TINY]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ.get(
      'JAXSEG_TEST_CACHE', '/tmp/jaxseg-test-xla-cache'))
  return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def test_reproduction_resumes_after_a_kill_and_skips_finished_runs(tmp_path):
  data_dir = write_ssl4mis_tree(tmp_path / 'ACDC', {
      'train': ('patient001', 'patient002'), 'val': ('patient003',), 'test': ('patient004',)})
  workdir = tmp_path / 'W'
  first = workdir / 'supervised' / 'seed_0'
  # Killed (the whole process group, as Ctrl-C would) once the first run has a checkpoint.
  proc = _runner(data_dir, workdir, start_new_session=True)
  deadline = time.time() + 240
  while not (first / 'checkpoints' / 'latest' / '2').exists():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, 'no checkpoint written in time'
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (first / 'results.json').exists()

  proc = _runner(data_dir, workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert '1 to resume, 3 to start' in out
  assert 'resuming supervised seed 0' in out and 'resumed from step' in out
  finished = sorted(str(p.parent.relative_to(workdir)) for p in workdir.rglob('results.json'))
  assert finished == ['meanteacher/seed_0', 'meanteacher/seed_1', 'supervised/seed_0',
                      'supervised/seed_1']
  stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob('results.json')}

  # Again: nothing trains, the same tables come out.
  proc = _runner(data_dir, workdir)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert '4 runs: 4 finished, 0 to resume, 0 to start' in out
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('results.json')} == stamps
  for split in ('val', 'test'):
    table = (workdir / f'comparison_{split}.md').read_text()
    rows = [l for l in table.splitlines() if l.startswith('| supervised')
            or l.startswith('| meanteacher')]
    assert len(rows) == 2 and all(l.split('|')[3].strip() == '2' for l in rows), table
  # The validation cell is the mean over seeds of each run's mean Dice, from its results.json.
  means = []
  for seed in (0, 1):
    with open(workdir / 'supervised' / f'seed_{seed}' / 'results.json') as f:
      volumes = json.load(f)['splits']['val']['per_volume']
    means.append(np.mean([np.nanmean(np.asarray(v['dice'], float)) for v in volumes]))
  val_row = next(l for l in (workdir / 'comparison_val.md').read_text().splitlines()
                 if l.startswith('| supervised'))
  assert val_row.split('|')[4].strip() == f'{np.mean(means) * 100:.2f} ± {np.std(means) * 100:.2f}'


def test_committed_records_still_read():
  """The records in experiments/records back BUILD_NOTES' tables: a config or results format
  change must keep them readable (or convert them)."""
  records = sorted((REPO / 'experiments' / 'records').glob('*/*/seed_*'))
  assert records, 'experiments/records holds no run'
  for workdir in records:
    result = compare.read_run(str(workdir), 'val')
    assert result.steps == result.config.steps, workdir
    assert result.per_class_dice.size and np.isfinite(result.per_class_dice).all(), workdir
    assert result.config.seed == int(workdir.name.removeprefix('seed_')), workdir
