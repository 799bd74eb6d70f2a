"""Host overhead of the training loop: metrics fetched every step (the loop before issue 11.3)
against metrics fetched every `log_every` steps with the next batch prefetched to the device.

  python benchmarks/loop_fetch.py                        # acdc_meanteacher CPU profile, 30 steps
  python benchmarks/loop_fetch.py --experiment smoke --steps 60 --rounds 3

Both variants run the same jitted step on the same Grain stream in one process, alternating
rounds (so a shared machine's load falls on both), and report the median wall seconds per step.
On a CPU the "device" is the same cores as the host, so overlap gains little; the difference
matters on accelerators, where a per-step fetch stalls dispatch until the step has finished.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402

from common import machine_info  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg.data import datasets, pipeline  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.training import prefetch, schedules, step as step_lib  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--experiment', default='acdc_meanteacher')
  parser.add_argument('--steps', type=int, default=30, help='steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--log-every', type=int, default=10)
  args = parser.parse_args()

  config = config_lib.load_experiment(args.experiment, 'cpu')
  data = datasets.load_data(config)
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  mesh = step_lib.make_mesh(1)
  jitted = step_lib.jit_train_step(train_step, mesh)
  state = step_lib.replicate(step_lib.init_state(model, tx, config), mesh)
  put = lambda pair: tuple(step_lib.shard_batch(batch, mesh) for batch in pair)

  def every_step(state, batches):
    for _ in range(args.steps):
      state, metrics = jitted(state, *put(next(batches)))
      jax.device_get(metrics)
    return state

  def every_log(state, batches):
    batches = prefetch.DevicePrefetch(batches, put)
    pending = []
    for step in range(1, args.steps + 1):
      state, metrics = jitted(state, *next(batches))
      pending.append(metrics)
      batches.prefetch()
      if step % args.log_every == 0 or step == args.steps:
        jax.device_get(pending)
        pending = []
    return state

  variants = {'fetch every step': every_step, f'fetch every {args.log_every}, prefetch': every_log}
  times = {name: [] for name in variants}
  state = every_step(state, pipeline.make_train_iterator(data, config, True))  # compile, warm up
  for _ in range(args.rounds):
    for name, run in variants.items():
      batches = pipeline.make_train_iterator(data, config, True)
      next(batches)  # start the read threads outside the timing
      start = time.perf_counter()
      state = jax.block_until_ready(run(state, batches))
      times[name].append((time.perf_counter() - start) / args.steps)
  info = machine_info(1)
  print(f'{args.experiment} (CPU profile), {args.steps} steps x {args.rounds} rounds on '
        f'{info["cpu"]} ({info["cpu_count"]} cores), {info["platform"]}')
  base = statistics.median(times['fetch every step'])
  for name, values in times.items():
    median = statistics.median(values)
    print(f'{name:32s} {median * 1e3:8.1f} ms/step  (x{median / base:.3f}; rounds '
          f'{", ".join(f"{v * 1e3:.1f}" for v in values)})')


if __name__ == '__main__':
  main()
