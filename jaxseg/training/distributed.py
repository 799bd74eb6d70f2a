"""Several processes, one run: start-up, who holds which rows of a batch, and process-0-only work.

One process per host (SLURM node, TPU VM, or a CPU process in tests) runs the same program; the
mesh's 'data' axis spans every device of every process (`jax.distributed`, nothing home-made).
Each process reads only the rows of every global batch that its own devices hold
(`local_rows`), and `step.shard_batch` assembles the global batch from the processes' parts.
Process 0 alone writes logs, TensorBoard, results and the report, and validates: every other
process receives the numbers it needs (the mean Dice that picks the best checkpoint) through
the coordination service's key-value store, which has no time limit to trip on while process 0
evaluates.

A failure in one process must not leave the others waiting in a collective forever: the
failing process publishes its message (`abort`), and a watchdog thread in every process ends
that process with the message as soon as it appears, or as soon as the coordinator is gone.

With one process everything here is a no-op and a run behaves exactly as without this module.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import sys
import threading
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg.errors import ConfigError

_ERROR_KEY = 'jaxseg/error'
_WAIT_MS = 7 * 24 * 3600 * 1000  # process 0 may validate for hours; the watchdog ends real hangs
_names = itertools.count()
_finished = threading.Event()


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the run's processes: explicitly (all three arguments) or as detected by
  `jax.distributed` (SLURM, Open MPI, TPU pods). Call before anything touches a JAX device.

  A launch that is one process (no cluster, or a cluster job of one task) starts nothing.
  """
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit) and None in explicit:
    raise ConfigError('--coordinator, --num-processes and --process-id go together '
                      '(give all three, or none to let jax.distributed detect the cluster)')
  if coordinator is not None:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError(f'--process-id {process_id} must be in [0, --num-processes '
                        f'{num_processes})')
    if num_processes == 1:
      return
    # 'deactivate': explicit flags win over a cluster environment (e.g. a SLURM allocation).
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               cluster_detection_method='deactivate')
  elif not jax.distributed.is_initialized():  # (a launcher script may have joined already)
    if _one_task_launch():
      return
    try:
      jax.distributed.initialize(local_device_ids=_slurm_one_task_per_node_devices())
    except ValueError as e:
      # jax.distributed found no cluster environment: an ordinary one-process run.
      if 'coordinator_address should be defined' in str(e):
        return
      raise
    except RuntimeError as e:
      # Called in a process that already computed with JAX (e.g. `run.main` in a test): it
      # has its devices, and is one process.
      if 'must be called before' in str(e):
        return
      raise
  if jax.process_count() > 1:
    if jax.process_index() != 0:
      sys.stdout = open(os.devnull, 'w')  # process 0 prints; errors still reach stderr
    watchdog = threading.Thread(target=_watchdog, name='jaxseg-watchdog', daemon=True)
    watchdog.start()
    # Before jax.distributed's own exit handler (atexit runs last-registered first): a thread
    # still inside a coordination-service call when the interpreter ends aborts the process.
    atexit.register(_stop_watchdog, watchdog)


def _one_task_launch() -> bool:
  """A SLURM job step or mpirun of one task: jax.distributed would start a coordinator for it
  (and, on SLURM, hide all GPUs but one); a one-process run starts nothing."""
  for variable in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if os.environ.get(variable) == '1':
      return True
  return False


def _slurm_one_task_per_node_devices() -> list[int] | None:
  """jax.distributed gives a SLURM task only the GPU numbered like its local task id (one task
  per GPU). With one task per node (jaxseg's layout) the task gets every GPU of its node."""
  if os.environ.get('SLURM_NTASKS_PER_NODE') != '1':
    return None
  gpus = os.environ.get('CUDA_VISIBLE_DEVICES', '')
  # jax_cuda_visible_devices counts within CUDA_VISIBLE_DEVICES. Unknown GPUs: [] leaves
  # every device visible (jax.distributed only restricts a non-empty list).
  return list(range(len(gpus.split(',')))) if gpus else []


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def is_main() -> bool:
  """Process 0: the one that writes files, prints and shows progress."""
  return jax.process_index() == 0


def _client():
  # jax.distributed's coordination-service client; the public API has no key-value store.
  from jax._src import distributed as jax_distributed  # noqa: PLC0415
  return jax_distributed.global_state.client


def local_rows(mesh: Mesh, batch_size: int) -> tuple[int, ...] | None:
  """Rows of a global batch of `batch_size` that this process's devices hold under the batch
  sharding (ascending, the order `jax.make_array_from_process_local_data` maps them in); None
  with one process (every row)."""
  if not is_multiprocess():
    return None
  sharding = NamedSharding(mesh, P('data'))
  rows = set()
  for index in sharding.addressable_devices_indices_map((batch_size,)).values():
    rows.update(range(*index[0].indices(batch_size)))
  if not rows:
    raise ConfigError(f'process {jax.process_index()} holds no device of the mesh; with several '
                      'processes the mesh spans every device (leave mesh.num_devices at 0)')
  return tuple(sorted(rows))


def barrier(name: str) -> None:
  """Every process waits here until all have arrived."""
  if is_multiprocess():
    _client().wait_at_barrier(f'jaxseg/{name}/{next(_names)}', _WAIT_MS)


def on_main(name: str, fn: Callable[[], Any]) -> Any:
  """Runs `fn` on process 0 only and returns its (JSON-serializable) result on every process:
  work done once (validation, the final report), whose outcome every process needs."""
  if not is_multiprocess():
    return fn()
  key = f'jaxseg/result/{name}/{next(_names)}'
  if is_main():
    result = fn()
    _client().key_value_set(key, json.dumps(result, default=_jsonable))
    return result
  return json.loads(_client().blocking_key_value_get(key, _WAIT_MS))


def _jsonable(obj):
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  raise TypeError(f'not JSON serializable: {type(obj)}')


def local_copy(tree):
  """A replicated state as arrays of this process alone (its first device), for work that one
  process does by itself (validation): a program over the global arrays would wait for every
  process to run it too."""
  if not is_multiprocess():
    return tree
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def abort(message: str, code: int = 2) -> None:
  """Ends this process after telling the others why; they stop too (see `_watchdog`).
  Returns at once with one process."""
  if not is_multiprocess():
    return
  _finished.set()  # this process's own watchdog must not report the message a second time
  try:
    _client().key_value_set(_ERROR_KEY, f'process {jax.process_index()}: {message}')
  except Exception:  # noqa: BLE001 (another process published first, or the coordinator is gone)
    pass
  try:  # give the others a moment to read the message before the coordinator (process 0) goes
    _client().wait_at_barrier('jaxseg/aborted', 10_000)
  except Exception:  # noqa: BLE001 (a process that never arrives is already gone)
    pass
  _exit(code)


def _watchdog() -> None:
  """Waits for another process's error; then stops this one (which may be blocked in a
  collective that will never complete) with that message."""
  client = _client()
  while not _finished.is_set():
    try:
      message = client.blocking_key_value_get(_ERROR_KEY, 1000)
    except Exception as e:  # noqa: BLE001
      if _finished.is_set():
        return
      if 'DEADLINE_EXCEEDED' in str(e) or 'timed out' in str(e).lower():
        continue
      message = f'lost the coordinator (process 0 stopped?): {e}'
    if _finished.is_set():
      return
    print(f'error: {message}', file=sys.stderr, flush=True)
    try:
      client.wait_at_barrier('jaxseg/aborted', 10_000)
    except Exception:  # noqa: BLE001
      pass
    _exit(2)


def _exit(code: int) -> None:
  # No clean jax.distributed shutdown: it waits for every process, and one may be stuck in a
  # collective. The coordination service sees the process gone.
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # noqa: BLE001
      pass
  os._exit(code)


def _stop_watchdog(watchdog: threading.Thread) -> None:
  _finished.set()
  watchdog.join(timeout=10)


def finish() -> None:
  """Marks a normal end: all processes have finished their work; stop watching for errors."""
  if is_multiprocess():
    barrier('finish')
    _finished.set()


def main_only(main: Callable[[], int]) -> int:
  """Runs a command that trains and shards nothing (evaluate, predict, report): launched as
  several processes, process 0 does the work while the others wait, and all exit with its
  status; as one process, just `main()`."""
  initialize()
  if not is_multiprocess():
    return main()
  code = 0
  if is_main():
    try:
      code = main()
    except BaseException as e:  # noqa: BLE001 (the others must not wait for ever)
      abort(f'{type(e).__name__}: {e}', code=1)
      raise
    if code:
      abort(f'exit status {code} (its message is in process 0\'s output)', code=code)
  code = on_main('exit-status', lambda: code)
  finish()
  return code

