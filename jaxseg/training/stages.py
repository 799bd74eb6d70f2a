"""Multi-stage runs: pretraining stages, fine-tuning, and self-training rounds, chained in one run.

A config with `stage_order = ('a', 'b', ...)` trains each stage as its own single-stage config
(`config_lib.stage_config`: `config.stages[name]` merged over the run's config) through the same
train step and loop. Each stage starts from the stage before (`stage.init`: its last state, or
its best checkpoint by validation Dice) with a fresh optimizer, and can first give the unlabeled
images pseudo-labels from that model (`stage.pseudo_labels`; LCLPL's self-training rounds).

Layout of the run directory:
  config.json            the whole staged config (what --resume continues)
  stages/NN_<name>/      every stage but the last: config.json, checkpoints/, results.json,
                         pseudo_labels.npz when the stage used them
  checkpoints/, results.json, results.md
                         the final stage's, so evaluate/predict/report read a staged run as any
  stages.json            [{name, start_step, end_step}] in the run's step numbering
  metrics.jsonl          every stage's metrics, steps counted from the start of the run

A stage is done when its results.json exists and its latest checkpoint is at its last step;
`--resume` skips done stages, continues the stage it was in from its latest checkpoint (or from
its start when it had saved none), and starts the rest. `--resume --steps N` lengthens the final
stage only, so a finished run can be extended without retraining the stages before it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import tqdm

from jaxseg import config as config_lib
from jaxseg.data.sources import PseudoLabeledSource
from jaxseg.errors import ConfigError, DataError
from jaxseg.evaluation import inference
from jaxseg.training import rundir, runs

INITS = ('previous', 'previous_best')


def stage_dirs(config, workdir: str) -> list[str]:
  order = config.stage_order
  return [os.path.join(workdir, 'stages', f'{i + 1:02d}_{name}') for i, name in
          enumerate(order[:-1])] + [workdir]


def run_stages(config, data, workdir: str, resume: bool, progress: bool,
               train_stage) -> dict[str, Any]:
  """Trains the stages in order; `train_stage` is the loop's (passed in: the loop imports this
  module)."""
  names = list(config.stage_order)
  configs = [config_lib.stage_config(config, name) for name in names]
  for name, stage in zip(names, configs):
    if stage.stage.init not in INITS:
      raise ConfigError(f'stages.{name}.stage.init: unknown {stage.stage.init!r}; known: {INITS}')
  dirs = stage_dirs(config, workdir)
  boundaries, offset = [], 0
  for stage in configs:
    boundaries.append({'name': stage.stage.name, 'start_step': offset,
                       'end_step': offset + stage.steps})
    offset += stage.steps
  rundir.write_json(os.path.join(workdir, 'stages.json'), boundaries)

  results = None
  for i, (stage, stage_dir, bounds) in enumerate(zip(configs, dirs, boundaries)):
    final = i == len(configs) - 1
    latest = max(runs.saved_steps(stage_dir, 'latest'), default=None)
    done = os.path.isfile(os.path.join(stage_dir, 'results.json')) and latest == stage.steps
    if done:
      print(f'stage {i + 1}/{len(configs)} {stage.stage.name}: done, skipped', flush=True)
      continue
    os.makedirs(stage_dir, exist_ok=True)
    record = os.path.join(stage_dir, 'config.json' if not final else 'stage_config.json')
    rundir.write_text(record, config_lib.to_json(stage))
    started = latest is not None
    print(f'stage {i + 1}/{len(configs)} {stage.stage.name}: {stage.steps} steps, losses '
          f'{", ".join(stage.losses)}' + (' (resumed)' if started else ''), flush=True)
    init_variables, stage_data = None, data
    if i > 0:
      previous = configs[i - 1], dirs[i - 1]
      kind = 'best' if stage.stage.init == 'previous_best' else 'latest'
      if not started:
        init_variables = restore_variables(*previous, kind)
      if stage.stage.pseudo_labels:
        stage_data = with_pseudo_labels(data, stage, *previous, stage_dir, progress)
    results = train_stage(stage, stage_data, stage_dir, resume=started, progress=progress,
                          log_dir=workdir, step_offset=bounds['start_step'],
                          init_variables=init_variables)
  if results is None:  # every stage was already done
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
  results['stages'] = boundaries
  # Wall time and budget of the whole run (compare reports them), not of its last stage.
  walls = []
  for stage_dir in dirs:
    with open(os.path.join(stage_dir, 'results.json')) as f:
      saved = json.load(f)
    # The run's own results.json already holds the totals when a finished run is resumed.
    walls.append(saved['stage_wall_seconds'][-1] if 'stage_wall_seconds' in saved
                 else saved.get('train_wall_seconds', 0.0))
  results['stage_wall_seconds'] = walls
  results['train_wall_seconds'] = sum(walls)
  results['steps'] = boundaries[-1]['end_step']
  rundir.write_json(os.path.join(workdir, 'results.json'), results, default=rundir.jsonable)
  return results


def restore_variables(config, stage_dir: str, kind: str) -> dict[str, Any]:
  """{'params', 'batch_stats'} of a finished stage's `kind` ('latest' or 'best') checkpoint."""
  if kind == 'best' and not runs.saved_steps(stage_dir, 'best'):
    raise ConfigError(f'{stage_dir}: stage {config.stage.name} kept no best checkpoint (it ran '
                      'without validation, eval.every=0); start the next stage from '
                      "stage.init='previous'")
  return runs.open_run(stage_dir, kind, config=config).variables


def with_pseudo_labels(data, stage, previous_config, previous_dir: str, stage_dir: str,
                       progress: bool):
  """`data` whose unlabeled images carry pseudo-labels from the previous stage's model.

  Computed once per stage and kept in `pseudo_labels.npz` (so a resumed stage trains on the same
  labels, and they can be inspected); the model is the previous stage's best checkpoint when it
  has one (LCLPL: 'from the best stage-1 model'), else its last state.
  """
  path = os.path.join(stage_dir, 'pseudo_labels.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as saved:
        labels = [saved[f'{i}'] for i in range(len(saved.files))]
    except (OSError, ValueError, KeyError) as e:
      raise DataError(f'{path}: unreadable pseudo-labels ({e}); delete it to recompute') from None
    if len(labels) != len(data.unlabeled):
      raise DataError(f'{path}: {len(labels)} pseudo-labels for {len(data.unlabeled)} unlabeled '
                      'images; delete it to recompute')
  else:
    kind = 'best' if runs.saved_steps(previous_dir, 'best') else 'latest'
    logits_fn = runs.open_run(previous_dir, kind, config=previous_config).logits_fn
    images = (data.unlabeled[i]['image'] for i in range(len(data.unlabeled)))
    e = stage.eval
    labels = inference.predict_slices(
        logits_fn, tqdm.tqdm(images, total=len(data.unlabeled), desc='pseudo-labels', unit='slice',
                             leave=False, disable=not progress),
        patch_size=e.patch_size, interp_order=e.interp_order, batch_size=e.batch_size)
    np.savez_compressed(path, **{f'{i}': label for i, label in enumerate(labels)})
  counts = np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=stage.num_classes)
  print(f'pseudo-labels for {len(labels)} unlabeled images; class fractions '
        + ', '.join(f'{c / counts.sum():.3f}' for c in counts), flush=True)
  return dataclasses.replace(data, unlabeled=PseudoLabeledSource(data.unlabeled, labels))
