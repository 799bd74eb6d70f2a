"""`train_and_evaluate`: the one training loop, importable and tested; `jaxseg.run` only parses.

The loop feeds paired labeled/unlabeled batches to the jitted train step, logs metrics, validates
every `eval.every` steps keeping the best checkpoint by mean validation Dice, saves the latest
state with the data iterators' positions for `--resume`, and ends with a per-class table of the
best checkpoint on the validation (and, when present, test) volumes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxseg import config as config_lib
from jaxseg.data import datasets, pipeline
from jaxseg.errors import ConfigError, JaxsegError, TrainingDiverged
from jaxseg.evaluation import inference, metrics as metrics_lib
from jaxseg.models import build_model
from jaxseg.training import checkpoint, distributed, objectives, schedules, step as step_lib
from jaxseg.training.logging import MetricsWriter, NullWriter


def check_workdir(workdir: str, resume: bool) -> None:
  """Refuses to overwrite a run, or to resume something that is not one."""
  exists = os.path.isdir(workdir) and bool(os.listdir(workdir))
  if resume and not exists:
    raise ConfigError(f'{workdir}: nothing to resume (no run directory there)')
  if resume and not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise ConfigError(f'{workdir}: nothing to resume (no config.json; not a jaxseg run directory)')
  if not resume and exists:
    raise ConfigError(f'{workdir}: run directory already exists and is not empty; pass --resume '
                      'to continue it or choose another --workdir (nothing was changed)')


def make_logits_fn(model):
  """Evaluation forward pass: running batch statistics, no dropout."""
  apply = jax.jit(lambda variables, x: model.apply(variables, x, train=False)['logits'])
  return lambda state: (lambda x: apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, x))


def evaluate_split(logits_fn, volumes, config, progress: bool = True):
  return inference.evaluate_volumes(
      lambda image: inference.predict(logits_fn, image, config), volumes,
      num_classes=config.num_classes, units=config.eval.units, empty=config.eval.empty,
      progress=progress)


def _truncate_metrics(workdir: str, last_step: int) -> None:
  """After a resume, forget training logs written past the restored checkpoint."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)['step'] <= last_step]
  with open(path, 'w') as f:
    f.writelines(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
                       progress: bool = True) -> dict[str, Any]:
  """Trains `config` in `workdir`; returns the final results (also saved as results.json).

  With several processes (`distributed.initialize`) every process calls this with the same
  arguments; process 0 alone prints, shows progress and writes the run directory's files.
  """
  main = distributed.is_main()
  progress = progress and main
  if config.stage_order and distributed.is_multiprocess():
    raise ConfigError(f'{config.experiment}: staged runs (stage_order) train on one process '
                      'for now; launch it as a single process')
  # Unknown loss names or stage keys fail before any work.
  for name in config.stage_order or ('',):
    objectives.resolve(tuple(config_lib.stage_config(config, name).losses if name
                             else config.losses))
  check_workdir(workdir, resume)
  if resume:
    checkpoint.check_process_count(workdir)
    saved = config_lib.read_run_config(workdir, resolve_stages=False)
    # A resume may train longer, and read the same data from where it has moved to.
    saved.steps = config.steps
    if config.data.dir:
      saved.data.dir = config.data.dir
    config = saved
  data = datasets.load_data(config)
  data.check(progress)  # bad data fails before the run directory is touched
  print(data.description, flush=True)
  distributed.barrier('checked')  # no process creates the directory another is still checking
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    if config.stage_order:
      from jaxseg.training import stages  # noqa: PLC0415 (stages imports this module)
      results = stages.run_stages(config, data, workdir, resume, progress)
    else:
      if main:
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
          f.write(config_lib.to_json(config))
      results = train_stage(config, data, workdir, resume=resume, progress=progress)
  except JaxsegError:
    # A run that failed before its first checkpoint leaves nothing worth keeping; a directory
    # that existed before (a resume) is never removed.
    latest = os.path.join(workdir, 'checkpoints', 'latest')
    finished_stages = os.path.isdir(os.path.join(workdir, 'stages'))
    if (main and created and not finished_stages
        and not (os.path.isdir(latest) and os.listdir(latest))):
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  if config.report and main:
    write_report(workdir, progress)
  distributed.barrier('run-finished')  # every process leaves once the run directory is complete
  return results


def write_report(workdir: str, progress: bool) -> None:
  """The run's figures and report.md; a figure that cannot be drawn never fails a finished run."""
  from jaxseg import report  # noqa: PLC0415 (matplotlib only when a report is written)
  try:
    path = report.write_report(workdir, progress=progress)
    print(f'report: {path}', flush=True)
  except Exception as e:  # noqa: BLE001 (training is done and saved; say why and go on)
    print(f'warning: {workdir}: report not written ({type(e).__name__}: {e}); retry with '
          f'python -m jaxseg.report --workdir {workdir}', flush=True)


def train_stage(config, data, workdir: str, *, resume: bool, progress: bool,
                log_dir: str | None = None, step_offset: int = 0,
                init_variables: dict[str, Any] | None = None) -> dict[str, Any]:
  """Trains one (single-stage) config with checkpoints in `workdir`.

  Multi-stage runs (stages.py) log every stage into one `log_dir` with steps counted from the
  run's start (`step_offset`), and start a stage from `init_variables` ({'params',
  'batch_stats'} of the stage before). `eval.every=0` trains without validation (pretraining
  stages, whose logits mean nothing yet): no best checkpoint and no final report.
  """
  log_dir = log_dir or workdir
  evaluate = config.eval.every > 0
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  mesh = step_lib.make_mesh(config.mesh.num_devices)
  step_lib.check_batch_divisible(config, mesh, train_step.needs_unlabeled,
                                 train_step.needs_labeled)
  jitted_step = step_lib.jit_train_step(train_step, mesh)
  state = step_lib.init_state(model, tx, config)
  if init_variables is not None:
    state = start_from(state, init_variables, tx)
  state = step_lib.replicate(state, mesh)
  # Each process reads only its own rows of every global batch.
  iterator = pipeline.make_train_iterator(
      data, config, train_step.needs_unlabeled, train_step.needs_labeled,
      local_rows=lambda batch_size: distributed.local_rows(mesh, batch_size))
  ckpts = checkpoint.Checkpoints(workdir, keep=config.checkpoint.keep)
  best = {'dice': -math.inf, 'step': 0}
  if resume:
    state, data_state, meta = ckpts.restore('latest', state)
    iterator.set_state(data_state)
    best = meta['best']
    print(f'resumed from step {int(state.step)} of {config.steps}', flush=True)
  # Forget logs written past the restored checkpoint (or past the start of a stage begun anew).
  main = distributed.is_main()
  if main:
    _truncate_metrics(log_dir, step_offset + int(state.step))
  writer = MetricsWriter(log_dir) if main else NullWriter()
  logits_fn = make_logits_fn(model)
  start_step = int(state.step)
  best_val = None  # the best checkpoint's validation results, kept for the final report
  t0 = time.time()

  bar = tqdm.tqdm(total=config.steps, initial=start_step, desc=config.experiment or 'train',
                  unit='step', disable=not progress, dynamic_ncols=True)
  try:
    for step in range(start_step + 1, config.steps + 1):
      labeled, unlabeled = next(iterator)
      state, metrics = jitted_step(state, step_lib.shard_batch(labeled, mesh),
                                   step_lib.shard_batch(unlabeled, mesh))
      metrics = jax.device_get(metrics)
      if not np.isfinite(metrics['loss']):
        last = ckpts.latest_step()
        raise TrainingDiverged(
            f'{workdir}: loss became {float(metrics["loss"])} at step {step}; training stopped, '
            f'the last good checkpoint (step {last}) is kept')
      if step % config.log_every == 0 or step == config.steps:
        writer.write(step_offset + step, metrics)
      bar.set_postfix(loss=f'{float(metrics["loss"]):.4f}', best_dice=f'{max(best["dice"], 0):.4f}')
      bar.update(1)

      if evaluate and (step % config.eval.every == 0 or step == config.steps):
        val = {}

        def validate():
          # Process 0 validates on its own copy of the state; the others wait for its mean Dice.
          per_volume, summary = evaluate_split(logits_fn(distributed.local_copy(state)),
                                               data.splits['val'], config, progress)
          writer.write(step_offset + step,
                       metrics_lib.flat_scalars(summary, config.class_names), prefix='val')
          val['result'] = (step, per_volume, summary)  # noqa: B023 (called at once)
          return float(np.nanmean(summary['dice']['mean']))

        mean_dice = distributed.on_main('val', validate)
        if mean_dice > best['dice']:
          best = {'dice': mean_dice, 'step': step}
          best_val = val.get('result')  # process 0's; None elsewhere
          ckpts.save('best', step, state, None, {'step': step, 'best': best})
      if step % config.checkpoint.every == 0 or step == config.steps:
        ckpts.save('latest', step, state, iterator.get_state(), {'step': step, 'best': best})
  finally:
    bar.close()
    writer.close()
  wall = time.time() - t0

  results = (final_report(model, ckpts, state, data, config, workdir, progress, best_val)
             if evaluate else {'best_step': None, 'splits': {}})
  results.update(steps=config.steps, train_wall_seconds=wall, resumed_from=start_step)
  if main:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2, default=jsonable)
  ckpts.close()
  return results


def start_from(state, variables: dict[str, Any], tx):
  """A fresh state (step 0, new optimizer) with another stage's parameters and statistics."""
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  params, batch_stats = variables['params'], variables['batch_stats']
  return state.replace(params=params, batch_stats=batch_stats, teacher_params=copy(params),
                       teacher_batch_stats=copy(batch_stats), opt_state=tx.init(params))


def final_report(model, ckpts, state, data, config, workdir: str, progress: bool,
                 best_val=None) -> dict:
  """Evaluates the best checkpoint on every split; prints and saves the per-class tables.

  `best_val` = (step, per_volume, summary): the validation results this process computed for
  the best checkpoint, reused instead of evaluating the same weights again (a resumed run
  evaluates anew).
  """
  best_state, _, meta = ckpts.restore('best', state)  # every process takes part in a restore
  # Process 0 evaluates; the others receive its results.
  return distributed.on_main('final', lambda: _evaluate_best(
      model, distributed.local_copy(best_state), meta, data, config, workdir, progress, best_val))


def _evaluate_best(model, best_state, meta, data, config, workdir, progress, best_val) -> dict:
  logits_fn = make_logits_fn(model)(best_state)
  results = {'best_step': meta['step'], 'splits': {}}
  lines = [f'# {config.experiment}: best checkpoint, step {meta["step"]}', '']
  for split, volumes in data.splits.items():
    if split == 'val' and best_val is not None and best_val[0] == meta['step']:
      per_volume, summary = best_val[1], best_val[2]
    else:
      per_volume, summary = evaluate_split(logits_fn, volumes, config, progress)
    table = metrics_lib.format_table(summary, config.class_names, units=config.eval.units)
    lines += [f'## {split} ({len(volumes)} volumes)', '', table, '']
    results['splits'][split] = {'summary': summary, 'per_volume': per_volume}
  text = '\n'.join(lines)
  print(text, flush=True)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(text + '\n')
  return results


def jsonable(obj):
  if isinstance(obj, np.ndarray):
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in obj.tolist()]
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  raise TypeError(f'not JSON serializable: {type(obj)}')
