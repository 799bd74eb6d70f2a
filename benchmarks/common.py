"""Measurement helpers shared by the benchmark scripts: machine description, XLA analyses, timing."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax

MIB = 2.0 ** 20


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        # x86 says 'model name'; some ARM kernels only 'Hardware' or 'Processor'.
        key, _, value = line.partition(':')
        if key.strip() in ('model name', 'Hardware', 'Processor') and value.strip():
          return value.strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or 'unknown'


def machine_info(num_devices: int) -> dict:
  d = jax.devices()[0]
  return {'device_kind': d.device_kind, 'platform': d.platform,
          'device_count': jax.device_count(), 'mesh_devices': num_devices,
          'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__}


def total_flops(cost):
  # cost_analysis() is a dict in recent JAX, a list of per-module dicts in older ones, or None.
  if cost is None:
    return None
  if isinstance(cost, dict):
    cost = [cost]
  flops = [c.get('flops') for c in cost if c and c.get('flops') is not None]
  return float(sum(flops)) if flops else None


def memory_stats(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):
    m = None
  keys = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
          'alias_size_in_bytes')
  return {k: (int(getattr(m, k)) if m is not None and hasattr(m, k) else None) for k in keys}


def time_compiled(compiled, args, repeats: int, warmup: int = 1) -> list[float]:
  """Wall seconds of `compiled(*args)` per call (outputs awaited), after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return times


def alternate(calls: dict, warmup: int, repeats: int) -> dict[str, float]:
  """Median ms of each zero-argument callable (each awaits its own result), the timed calls
  interleaved round-robin after the warm-up, so a load on a shared machine falls on all alike."""
  for fn in calls.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, fn in calls.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def median(times: list[float]) -> float:
  return statistics.median(times)


def compile_step(jitted, *args) -> dict:
  """Lowers and compiles `jitted` for `args` (timed apart) with XLA's FLOP and memory analyses.

  Returns {'compiled', 'lower_s', 'compile_s', 'flops', **memory_stats}. Call the returned
  executable directly: calling `jitted` would compile a second time (the AOT and jit caches are
  separate); it donates its arguments just as `jitted` would.
  """
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  try:
    flops = total_flops(compiled.cost_analysis())
  except (NotImplementedError, RuntimeError, AttributeError):
    flops = None
  return {'compiled': compiled, 'lower_s': lower_s, 'compile_s': compile_s, 'flops': flops,
          **memory_stats(compiled)}


def time_train_steps(compiled, state, labeled, unlabeled, warmup: int, repeats: int):
  """Calls a compiled train step warmup + repeats times, feeding its state back (it is donated).

  Returns (wall seconds of the timed calls, the last metrics or None).
  """
  times, metrics = [], None
  for i in range(warmup + repeats if repeats else 0):
    start = time.perf_counter()
    state, metrics = compiled(state, labeled, unlabeled)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times, metrics
