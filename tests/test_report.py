"""`jaxseg.report` on a tiny finished run: every figure written and linked; boundaries of warm-ups
and stages; the 2D projection; TensorBoard holds every logged scalar."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import shutil

import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import report, run

from conftest import tiny_config

FIGURES = ('learning_curves.png', 'metrics.png', 'overlays.png', 'embedding.png')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _png_size(path: pathlib.Path) -> tuple[int, int]:
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC, path
  return int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')


@pytest.fixture
def run_dir(finished_run):
  return finished_run


def test_report_writes_every_figure_and_links_it(run_dir):
  path = run_dir / 'report' / 'report.md'  # written by run.train_and_report; regenerated below
  text = path.read_text()
  assert pathlib.Path(report.write_report(str(run_dir))) == path
  assert 'Not drawn' not in text, text
  for name in FIGURES:
    width, height = _png_size(run_dir / 'report' / name)
    assert width >= 500 and height >= 400, (name, width, height)
    assert f']({name})' in text
  assert '## Results (best checkpoint)' in text and '### val (2 volumes)' in text
  assert 'PCA of the decoder features of pixels' in text  # smoke has no projection head


def test_report_without_results_draws_the_curves_and_says_why_not_the_rest(run_dir, tmp_path):
  partial = tmp_path / 'run'
  shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns('report', 'results.*'))
  rc = report.main(['--workdir', str(partial), '--no-progress'])
  assert rc == 0
  text = (partial / 'report' / 'report.md').read_text()
  assert (partial / 'report' / 'learning_curves.png').exists()
  assert not (partial / 'report' / 'metrics.png').exists()
  assert text.count('Not drawn:') == 2 and 'results.json: missing' in text


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = report.main(['--workdir', str(tmp_path)])
  assert rc == 2 and err.getvalue().startswith(f'error: {tmp_path / "config.json"}: missing')


def test_tensorboard_has_every_logged_scalar(run_dir):
  from tensorboardX.event_file_writer import event_pb2
  from jaxseg.training.logging import read_metrics
  logged = {f'{r["split"]}/{k}' for r in read_metrics(str(run_dir)) for k, v in r.items()
            if k not in ('step', 'split') and v is not None}
  assert {'train/lr', 'train/ema_decay', 'train/consistency', 'val/dice/mean'} <= logged
  tags = set()
  for path in (run_dir / 'tensorboard').glob('events.out.tfevents.*'):
    data, pos = path.read_bytes(), 0
    while pos < len(data):  # TFRecord framing: length, crc, event, crc
      length = int.from_bytes(data[pos:pos + 8], 'little')
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      tags |= {value.tag for value in event.summary.value}
      pos += 16 + length
  assert logged <= tags, logged - tags


def test_boundaries_of_warmups_and_stages():
  config = config_lib.base_config(losses=('supervised', 'mean_teacher', 'plgcl'))
  config.mean_teacher.start_step = 100
  config.plgcl.warmup_steps = 50
  assert report.boundaries(config, []) == [(50, 'PLGCL on'), (100, 'consistency on')]
  config.mean_teacher.start_step = 0
  config.losses = ('supervised',)
  assert report.boundaries(config, []) == []
  # Staged: each stage's warm-up counts from the stage's start; one past its end is not drawn.
  with config.unlocked():
    config.stage_order = ('pre', 'fine')
    config.stages = config_lib.ml_collections.ConfigDict({
        'pre': {'steps': 30},
        'fine': {'steps': 200, 'losses': ('supervised', 'plgcl'), 'plgcl': {'warmup_steps': 20}}})
  stages = [{'name': 'pre', 'start_step': 0, 'end_step': 30},
            {'name': 'fine', 'start_step': 30, 'end_step': 230}]
  assert report.boundaries(config, stages) == [(30, 'stage fine'), (50, 'PLGCL on')]


def test_stages_json_is_read_and_checked(tmp_path):
  assert report.read_stages(str(tmp_path)) == []
  (tmp_path / 'stages.json').write_text(json.dumps([{'name': 'a', 'start_step': 0, 'end_step': 5}]))
  assert report.read_stages(str(tmp_path)) == [{'name': 'a', 'start_step': 0, 'end_step': 5}]
  (tmp_path / 'stages.json').write_text('[{"name": "a"}]')
  with pytest.raises(Exception, match='stages.json: expected a JSON list'):
    report.read_stages(str(tmp_path))


def test_projection_separates_two_clusters():
  rng = np.random.default_rng(0)
  a = rng.normal(0, 0.1, (50, 8))
  b = rng.normal(0, 0.1, (50, 8)) + 3.0
  points, method = report.project_2d(np.concatenate([a, b]))
  assert points.shape == (100, 2) and method in ('PCA', 't-SNE')
  # The clusters are apart along the first coordinate with no overlap.
  first = points[:, 0]
  assert first[:50].max() < first[50:].min() or first[50:].max() < first[:50].min()


def test_report_of_a_run_without_validation(tmp_path):
  """A pretraining-only run (eval.every=0) has curves but no metrics: the report says so."""
  config = tiny_config()
  with config.unlocked():
    config.steps = 2
    config.eval.every = 0
    config.report = True
  results = run.train_and_report(config, str(tmp_path / 'run'), progress=False)
  assert results['splits'] == {} and results['best_step'] is None
  text = (tmp_path / 'run' / 'report' / 'report.md').read_text()
  assert '![learning curves](learning_curves.png)' in text
  assert 'Not drawn: the run was not validated' in text
