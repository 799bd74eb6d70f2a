"""`jaxseg.compare`: the papers' table from hand-made run directories with hand-computed cells."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import pathlib

import numpy as np
import pytest

from jaxseg import compare
from jaxseg import config as config_lib
from jaxseg.errors import DataError


def _run(folder: pathlib.Path, *, seed=0, labeled=7, dice=((0.8, 0.6, 0.9), (0.6, 0.4, 0.7)),
         hd95=((2.0, None, 4.0), (6.0, 8.0, 10.0)), steps=100, wall=125.0, split='test',
         experiment='acdc_meanteacher', lr=0.01) -> pathlib.Path:
  config = config_lib.base_config()
  config.experiment, config.seed, config.steps = experiment, seed, steps
  config.data.labeled_num = labeled
  config.optimizer.lr = lr
  folder.mkdir(parents=True)
  (folder / 'config.json').write_text(config_lib.to_json(config))
  per_volume = [{'name': f'v{i}', 'dice': list(d), 'jaccard': [x / 2 for x in d],
                 'hd95': list(h), 'asd': [1.0, 1.0, 1.0]}
                for i, (d, h) in enumerate(zip(dice, hd95))]
  results = {'best_step': steps, 'steps': steps, 'train_wall_seconds': wall,
             'splits': {'val': {'per_volume': per_volume}, split: {'per_volume': per_volume}}}
  (folder / 'results.json').write_text(json.dumps(results))
  return folder


def _call(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = compare.main([str(a) for a in argv])
  return rc, out.getvalue(), err.getvalue()


def test_one_run_is_mean_and_std_over_volumes(tmp_path):
  run = compare.read_run(str(_run(tmp_path / 'a')), None)
  assert run.split == 'test'
  rows, classes = compare.table_rows([run])
  assert classes == ['RV', 'MYO', 'LV'] and rows[0]['seeds'] == 1
  # Volume means over classes: Dice 0.7667 and 0.5667; HD95 (2+4)/2 = 3 (undefined left out), 8.
  np.testing.assert_allclose(rows[0]['dice'], (np.mean([0.7667, 0.5667]), 0.1), atol=1e-4)
  np.testing.assert_allclose(rows[0]['hd95'], (5.5, 2.5))
  np.testing.assert_allclose(rows[0]['dice/MYO'], (0.5, 0.1))


def test_seeds_of_one_config_are_one_row_with_std_over_seeds(tmp_path):
  a = _run(tmp_path / 'a', seed=0)
  b = _run(tmp_path / 'b', seed=1, dice=((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)))
  c = _run(tmp_path / 'c', labeled=3)
  runs = [compare.read_run(str(p), None) for p in (a, b, c)]
  rows, _ = compare.table_rows(runs)
  assert [r['seeds'] for r in rows] == [2, 1]
  assert [r['labeled'] for r in rows] == ['7', '3']
  run_means = [np.mean([0.7667, 0.5667]), 1.0]
  np.testing.assert_allclose(rows[0]['dice'], (np.mean(run_means), np.std(run_means)), atol=1e-4)
  assert rows[0]['runs'] == f'{a};{b}'


def test_ablations_are_named_by_the_setting_that_differs(tmp_path):
  runs = [compare.read_run(str(_run(tmp_path / n, lr=lr)), None)
          for n, lr in (('a', 0.01), ('b', 0.1))]
  rows, _ = compare.table_rows(runs)
  assert [r['method'] for r in rows] == ['acdc_meanteacher (optimizer.lr=0.01)',
                                         'acdc_meanteacher (optimizer.lr=0.1)']


def test_blocks_of_unused_terms_do_not_split_seeds(tmp_path):
  # Runs made before configs held only their own terms' blocks carry every method's block; such
  # a run and a newer one of the same settings are seeds of one configuration, named plainly.
  old, new = _run(tmp_path / 'old', seed=0), _run(tmp_path / 'new', seed=1)
  config = config_lib.read_run_config(str(old))
  config_lib.add_method_blocks(config, extra=('plgcl', 'mean_teacher'))  # plgcl unused here
  (old / 'config.json').write_text(config_lib.to_json(config))
  assert 'plgcl' in config_lib.read_run_config(str(old))
  rows, _ = compare.table_rows([compare.read_run(str(p), None) for p in (old, new)])
  assert [(r['method'], r['seeds']) for r in rows] == [('acdc_meanteacher', 2)]
  # A setting of a term the run does use still tells runs apart.
  config.mean_teacher.weight = 0.5
  config.losses = ('supervised', 'mean_teacher')
  (old / 'config.json').write_text(config_lib.to_json(config))
  new_config = config_lib.read_run_config(str(new))
  new_config.losses = ('supervised', 'mean_teacher')
  config_lib.add_method_blocks(new_config)
  (new / 'config.json').write_text(config_lib.to_json(new_config))
  rows, _ = compare.table_rows([compare.read_run(str(p), None) for p in (old, new)])
  assert len(rows) == 2 and 'mean_teacher.weight=0.5' in rows[0]['method'] + rows[1]['method']


def test_cli_writes_markdown_and_csv(tmp_path):
  a = _run(tmp_path / 'a')
  b = _run(tmp_path / 'b', experiment='acdc_plgcl', wall=3725.0)
  rc, out, err = _call([a, b, tmp_path / 'unfinished', '--output', tmp_path / 't' / 'table'])
  assert rc == 0, err
  assert f'skipped: {tmp_path / "unfinished" / "config.json"}: missing' in err
  md = (tmp_path / 't' / 'table.md').read_text()
  assert md.strip() in out
  header, rule, first, second = md.splitlines()[:4]
  assert header.startswith('| Method | Labeled | Seeds | DSC (%) | Jaccard (%) | HD95 (voxels) |')
  assert 'RV DSC (%)' in header and header.endswith('| Steps | Wall time |')
  assert first.startswith(
      '| acdc_meanteacher | 7 | 1 | 66.67 ± 10.00 | 33.33 ± 5.00 | 5.50 ± 2.50 |')
  assert second.endswith('| 100 | 1:02:05 |')
  with open(tmp_path / 't' / 'table.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == ['acdc_meanteacher', 'acdc_plgcl']
  assert math.isclose(float(rows[0]['dice_mean']), 0.6667, abs_tol=1e-4)
  assert rows[1]['wall_seconds'] == '3725.0' and rows[0]['split'] == 'test'


def test_split_falls_back_to_val_when_a_run_has_no_test(tmp_path):
  a = _run(tmp_path / 'a')
  b = _run(tmp_path / 'b', split='val', seed=1)
  rc, out, err = _call([a, b, '--output', tmp_path / 'c'])
  assert rc == 0, err
  assert 'val split.' in out and '| 2 |' in out


def test_no_finished_run_is_an_error(tmp_path):
  (tmp_path / 'x').mkdir()
  rc, _, err = _call([tmp_path / 'x', '--output', tmp_path / 'c'])
  assert rc == 2
  assert err.strip().splitlines()[-1] == 'error: no finished run among 1 given (reasons above)'
  assert not (tmp_path / 'c.md').exists()


def test_missing_split_named(tmp_path):
  a = _run(tmp_path / 'a', split='val')
  with pytest.raises(DataError, match=r'results.json: no test split \(has val\)'):
    compare.read_run(str(a), 'test')
