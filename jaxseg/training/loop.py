"""`train_and_evaluate`: the one training loop, importable and tested; `jaxseg.run` only parses.

The loop feeds paired labeled/unlabeled batches to the jitted train step, logs metrics, validates
every `eval.every` steps keeping the best checkpoint by mean validation Dice, saves the latest
state with the data iterators' positions for `--resume`, and ends with a per-class table of the
best checkpoint on the validation (and, when present, test) volumes. It returns there: the
report of a finished run is the entry point's next step (`jaxseg.run.train_and_report`), so
training never imports a command-line module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from jaxseg import config as config_lib, methods
from jaxseg.data import datasets, pipeline
from jaxseg.errors import ConfigError, JaxsegError, TrainingDiverged
from jaxseg.evaluation import metrics as metrics_lib
from jaxseg.evaluation.inference import evaluate_split, make_logits_fn
from jaxseg.models import build_model
from jaxseg.training import (checkpoint, distributed, prefetch, rundir, schedules, stages,
                             step as step_lib)
from jaxseg.training.logging import MetricsWriter, NullWriter


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
                       progress: bool = True, steps: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir`; returns the final results (also saved as results.json).

  A resume continues the run saved in `workdir` with its own config (`config` only gives
  `data.dir`, where the data may have moved) to its own step count, or to `steps` when given
  (`--steps`: the run is extended). A finished run is left untouched.

  With several processes (`distributed.initialize`) every process calls this with the same
  arguments; process 0 alone prints, shows progress, holds the directory's lock and writes its
  files.
  """
  main = distributed.is_main()
  progress = progress and main
  if config.stage_order and distributed.is_multiprocess():
    raise ConfigError(f'{config.experiment}: staged runs (stage_order) train on one process '
                      'for now; launch it as a single process')
  if steps is not None and not resume:
    config_lib.set_total_steps(config, steps)
  # Process 0 alone asks for the lock: processes probing it at once would see each other.
  if main:
    rundir.check(workdir, resume)
  else:
    rundir.check_contents(workdir, resume)
  if resume:
    checkpoint.check_process_count(workdir)
    config, extended = resumed_config(config, workdir, steps)
    finished = rundir.finished_results(workdir, config_lib.total_steps(config))
    if finished is not None and not extended:
      print(f'{workdir}: the run finished all {finished["steps"]} steps; nothing to do (--steps N '
            'with --resume trains it longer)', flush=True)
      return finished
  # Bad names and sizes fail before the run directory is touched; every term gets its config block.
  config_lib.add_method_blocks(config)
  for name in config.stage_order or ('',):
    stage = config_lib.stage_config(config, name) if name else config
    methods.resolve(tuple(stage.losses))
    config_lib.check_sizes(stage, f'stages.{name}.' if name else '')
  # The dataset's own config block and classes; config.json holds no other dataset's block.
  config = datasets.resolve_config(config)
  data = datasets.load_data(config)
  data.check(progress)  # bad data fails before the run directory is touched
  print(data.description, flush=True)
  distributed.barrier('checked')  # no process creates the directory another is still checking
  created = not os.path.isdir(workdir)
  with rundir.storage_errors(workdir):
    if main:
      os.makedirs(workdir, exist_ok=True)
    distributed.barrier('created')
    with rundir.hold(workdir) if main else contextlib.nullcontext():
      if not resume and main:
        rundir.check_contents(workdir, resume=False)  # another run may have begun here since
      try:
        with rundir.storage_errors(workdir):
          if main and (not resume or extended):
            rundir.write_text(os.path.join(workdir, 'config.json'), config_lib.to_json(config))
          if config.stage_order:
            results = stages.run_stages(config, data, workdir, resume, progress, train_stage)
          else:
            results = train_stage(config, data, workdir, resume=resume, progress=progress)
      except JaxsegError as e:
        # A run that failed before its first checkpoint leaves nothing worth keeping, unless it
        # diverged (its logs and config say why); a directory that existed before (a resume) is
        # never removed.
        latest = os.path.join(workdir, 'checkpoints', 'latest')
        finished_stages = os.path.isdir(os.path.join(workdir, 'stages'))
        if (main and created and not isinstance(e, TrainingDiverged) and not finished_stages
            and not (os.path.isdir(latest) and os.listdir(latest))):
          shutil.rmtree(workdir, ignore_errors=True)
        raise
  distributed.barrier('run-finished')  # every process leaves once the run directory is complete
  return results


def resumed_config(config, workdir: str, steps: int | None):
  """(the saved run's config, whether `steps` extends it); `config` gives only `data.dir`."""
  saved = config_lib.read_run_config(workdir, resolve_stages=False)
  if config.data.dir:
    with saved.unlocked():
      saved.data.dir = config.data.dir
  total = config_lib.total_steps(saved)
  if steps is None or steps == total:
    return saved, False
  if steps < total:
    raise ConfigError(f'--steps {steps}: shorter than the {total} steps of the run in {workdir}; '
                      'a resume continues a run or extends it')
  with saved.unlocked():
    if saved.stage_order:  # the final stage trains longer; finished stages stay as they were
      last = saved.stage_order[-1]
      saved.stages[last].steps = config_lib.stage_config(saved, last).steps + steps - total
    else:
      saved.steps = steps
  print(f'extending the run from {total} to {steps} steps (schedules that depend on the step '
        'count follow the new length)', flush=True)
  return saved, True


def train_stage(config, data, workdir: str, *, resume: bool, progress: bool,
                log_dir: str | None = None, step_offset: int = 0,
                init_variables: dict[str, Any] | None = None) -> dict[str, Any]:
  """Trains one (single-stage) config with checkpoints in `workdir`.

  Multi-stage runs (stages.py) log every stage into one `log_dir` with steps counted from the
  run's start (`step_offset`), and start a stage from `init_variables` ({'params',
  'batch_stats'} of the stage before). `eval.every=0` trains without validation (pretraining
  stages, whose logits mean nothing yet): no best checkpoint and no final report.

  The host never waits on the device between fetches: step metrics stay on the device and are
  fetched every `log_every` steps and before every validation, checkpoint and the last step,
  where the first non-finite loss stops the run, so no checkpoint is saved from a diverged state.
  The next batch is sent to the device while a step runs (prefetch.py).
  """
  log_dir = log_dir or workdir
  evaluate = config.eval.every > 0
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  streams = step_lib.streams(config)
  mesh = step_lib.make_mesh(config.mesh.num_devices)
  step_lib.check_batch_divisible(config, mesh, streams.unlabeled, streams.labeled)
  jitted_step = step_lib.jit_train_step(train_step, mesh)
  state = step_lib.init_state(model, tx, config)
  if init_variables is not None:
    state = step_lib.start_from(state, init_variables, tx)
  state = step_lib.replicate(state, mesh)
  # Each process reads only its own rows of every global batch; the next batch travels to the
  # device while a step runs.
  batches = prefetch.DevicePrefetch(
      pipeline.make_train_iterator(
          data, config, streams.unlabeled, streams.labeled,
          local_rows=lambda batch_size: distributed.local_rows(mesh, batch_size)),
      lambda pair: tuple(step_lib.shard_batch(batch, mesh) for batch in pair))
  # Closed on every way out (a divergence, a failed validation, an interrupt): closing waits for
  # Orbax's background writes, so the last checkpoint is whole on disk.
  with contextlib.closing(checkpoint.Checkpoints(workdir, keep=config.checkpoint.keep)) as ckpts:
    best = {'dice': -math.inf, 'step': 0}
    saved = None  # (step, loss) of the latest checkpoint, for a divergence message
    # Training time before this process: a run resumed over several sittings reports the time it
    # took to reach its end (work redone after a kill is counted once).
    wall_before = 0.0
    if resume and ckpts.latest_step() is None:
      # Killed before its first checkpoint was on disk (or during that write): nothing to lose.
      print(f'{workdir}: no checkpoint was saved before the run stopped; starting again from '
            'step 0', flush=True)
      resume = False
    if resume:
      state, data_state, meta = ckpts.restore('latest', state)
      batches.set_state(data_state)
      best = meta['best']
      saved = (int(meta['step']), meta.get('loss'))
      wall_before = float(meta.get('wall_seconds', 0.0))
      print(f'resumed from step {int(state.step)} of {config.steps}', flush=True)
    # Forget logs written past the restored checkpoint (or past the start of a stage begun anew).
    main = distributed.is_main()
    if main:
      _truncate_metrics(log_dir, step_offset + int(state.step))
    writer = MetricsWriter(log_dir) if main else NullWriter()
    logits_fn = make_logits_fn(model)
    start_step = int(state.step)
    best_val = None  # the best checkpoint's validation results, kept for the final report
    pending = []  # (step, metrics on the device) since the last fetch
    last_finite = None  # (step, loss)
    t0 = time.time()

    bar = tqdm.tqdm(total=config.steps, initial=start_step, desc=config.experiment or 'train',
                    unit='step', disable=not progress, dynamic_ncols=True)
    try:
      for step in range(start_step + 1, config.steps + 1):
        labeled, unlabeled = next(batches)
        state, metrics = jitted_step(state, labeled, unlabeled)
        pending.append((step, metrics))
        if step < config.steps:
          batches.prefetch()  # batch step + 1 travels to the device while this step runs
        bar.update(1)
        validate = evaluate and (step % config.eval.every == 0 or step == config.steps)
        save = step % config.checkpoint.every == 0 or step == config.steps
        if not (validate or save or step % config.log_every == 0):
          continue

        fetched, pending = jax.device_get(pending), []
        for done, values in fetched:
          loss = float(values['loss'])
          if not math.isfinite(loss):
            writer.write(step_offset + done, values)  # the bad step, its loss as null
            raise diverged(workdir, log_dir, done, loss, last_finite, saved)
          last_finite = (done, loss)
          if done % config.log_every == 0 or done == config.steps:
            writer.write(step_offset + done, values)
        bar.set_postfix(loss=f'{last_finite[1]:.4f}', best_dice=f'{max(best["dice"], 0):.4f}')

        if validate:
          val = {}

          def run_validation():
            # Process 0 validates on its own copy of the state; the others wait for its mean Dice.
            per_volume, summary = evaluate_split(logits_fn(distributed.local_copy(state)),
                                                 data.splits['val'], config, progress)
            writer.write(step_offset + step,
                         metrics_lib.flat_scalars(summary, config.class_names), prefix='val')
            val['result'] = (step, per_volume, summary)  # noqa: B023 (called at once)
            return float(np.nanmean(summary['dice']['mean']))

          mean_dice = distributed.on_main('val', run_validation)
          if mean_dice > best['dice']:
            best = {'dice': mean_dice, 'step': step}
            best_val = val.get('result')  # process 0's; None elsewhere
            ckpts.save('best', step, state, None, {'step': step, 'best': best, 'loss': loss})
        if save:
          ckpts.save('latest', step, state, batches.get_state(),
                     {'step': step, 'best': best, 'loss': loss,
                      'wall_seconds': wall_before + time.time() - t0})
          saved = (step, loss)
    finally:
      bar.close()
      writer.close()
    wall = wall_before + time.time() - t0

    results = (final_report(model, ckpts, state, data, config, workdir, progress, best_val)
               if evaluate else {'best_step': None, 'splits': {}})
    results.update(steps=config.steps, train_wall_seconds=wall, resumed_from=start_step)
    if main:
      rundir.write_json(os.path.join(workdir, 'results.json'), results, default=rundir.jsonable)
    return results


def diverged(workdir: str, log_dir: str, step: int, loss: float, last_finite, saved
             ) -> TrainingDiverged:
  """What stopped, the last finite loss, and what is kept: the latest checkpoint (finite, which
  is not the same as good) or, before the first one, the config and logs to diagnose it."""
  before = (f'last finite loss {last_finite[1]:.4g} at step {last_finite[0]}' if last_finite
            else 'no finite loss before it in this process')
  if saved is None:
    kept = (f'no checkpoint was saved yet; the config and logs ({log_dir}/metrics.jsonl) are '
            'kept to diagnose it (lower optimizer.lr, then start in another --workdir)')
  else:
    at = f' (loss {saved[1]:.4g})' if saved[1] is not None else ''
    kept = (f'the latest checkpoint, step {saved[0]}{at}, is kept: its loss was finite, which '
            f'does not make it good; read {log_dir}/metrics.jsonl before resuming from it')
  return TrainingDiverged(f'{workdir}: loss became {loss} at step {step} ({before}); training '
                          f'stopped; {kept}')


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
