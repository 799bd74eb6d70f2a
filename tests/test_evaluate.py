"""`python -m jaxseg.evaluate`: the per-class table of a saved run's checkpoint (best, last or a
step) on a split, printed and saved beside the run; a folder that is not a run is one `error:`
line. (The numbers equal the run's own final table: tests/test_run.py's smoke run.)"""

from __future__ import annotations

import json

import pytest

from jaxseg import evaluate
from jaxseg.data import datasets

from conftest import call, error_line, save_run, tiny_config


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A run directory with a best checkpoint at step 2 and the latest at step 4 (no training)."""
  workdir = tmp_path_factory.mktemp('evaluate') / 'run'
  save_run(workdir, tiny_config(), {'best': (2,), 'latest': (4,)})
  return workdir


@pytest.mark.parametrize('checkpoint, step', [('best', 2), ('last', 4), ('4', 4)])
def test_the_chosen_checkpoint_is_evaluated_and_saved(saved, checkpoint, step):
  rc, out, err = call(evaluate.main, ['--workdir', saved, '--checkpoint', checkpoint,
                                      '--no-progress'])
  assert rc == 0, err
  text = (saved / 'eval_val.md').read_text()
  volumes = len(datasets.load_data(tiny_config()).splits['val'])
  assert text.startswith(f'# smoke: {checkpoint} checkpoint (step {step}), val split, '
                         f'{volumes} volumes')
  assert text.strip() in out
  for name in ('RV', 'MYO', 'LV'):
    assert f'| {name} |' in text, text
  results = json.loads((saved / 'eval_val.json').read_text())
  assert results['step'] == step and len(results['per_volume']) == volumes
  assert len(results['summary']['dice']['mean']) == 3  # one per foreground class


def test_unknown_step_is_one_line_naming_the_saved_ones(saved):
  rc, _, err = call(evaluate.main, ['--workdir', saved, '--checkpoint', '3', '--no-progress'])
  error_line(rc, err, 'no checkpoint at step 3', 'saved steps: 2, 4')


def test_evaluate_missing_workdir(tmp_path):
  rc, _, err = call(evaluate.main, ['--workdir', tmp_path / 'no_run', '--no-progress'])
  error_line(rc, err, tmp_path / 'no_run', 'config.json', 'missing')
  assert not (tmp_path / 'no_run').exists()


def test_evaluate_damaged_config(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"experiment": "smoke", ')
  rc, _, err = call(evaluate.main, ['--workdir', workdir, '--no-progress'])
  error_line(rc, err, workdir / 'config.json')
