"""Run directories: who may write one, whether it can be resumed or is finished, and how a failed
write reaches the user.

- One process per run directory: `hold(workdir)` takes an exclusive `fcntl.flock` on
  `<workdir>/.lock` for the life of the run. The kernel drops the lock when its process ends,
  however it ends (SIGKILL included), so a killed run never leaves its directory stuck; the file
  stays and only records the holder's pid for the message.
- `check(workdir, resume)` refuses, before any work, to overwrite a run, to resume something that
  is not one, or to enter a directory another process holds.
- `storage_error(exc, folder)`: a full disk, read-only file system or missing permission, however
  deep in an exception chain (Orbax raises TensorStore's errors from its writer threads), as one
  StorageError line naming the folder.
- `write_text` writes a temporary file and renames it, so a kill or a full disk never leaves half
  a config or results file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
from typing import Any

import numpy as np

from jaxseg.errors import ConfigError, RunInUse, StorageError

LOCK_NAME = '.lock'

# errno -> (problem, what to do).
_FULL = 'free some space or choose a --workdir on another disk'
_UNWRITABLE = 'choose a --workdir you can write to'
DISK_ERRNOS = {
    errno.ENOSPC: ('no space left on the disk', _FULL),
    errno.EDQUOT: ('disk quota exceeded', _FULL),
    errno.EFBIG: ('file size limit reached', _FULL),
    errno.EROFS: ('read-only file system', _UNWRITABLE),
    errno.EACCES: ('permission denied', _UNWRITABLE),
    errno.EPERM: ('operation not permitted', _UNWRITABLE),
}
# TensorStore (under Orbax) reports these as text, without an errno.
DISK_MESSAGES = {
    'No space left on device': errno.ENOSPC,
    'Disk quota exceeded': errno.EDQUOT,
    'File too large': errno.EFBIG,
    'Read-only file system': errno.EROFS,
    'Permission denied': errno.EACCES,
}


def _chain(exc: BaseException):
  """`exc` and every exception it was raised from or during, groups included."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]


def storage_error(exc: BaseException, folder: str) -> StorageError | None:
  """The StorageError `exc` stands for when a write failed for lack of space or permission."""
  for e in _chain(exc):
    code = e.errno if isinstance(e, OSError) else None
    if code not in DISK_ERRNOS:
      code = next((c for text, c in DISK_MESSAGES.items() if text in str(e)), None)
    if code is None:
      continue
    where = getattr(e, 'filename', None) or folder
    if not os.path.isdir(where):  # name the folder the file was to be written in
      where = os.path.dirname(where) or folder
    problem, advice = DISK_ERRNOS[code]
    return StorageError(f'{where}: cannot write ({problem}); {advice}')
  return None


@contextlib.contextmanager
def storage_errors(folder: str):
  """Turns a failed write under `folder` into one StorageError line; other errors pass."""
  try:
    yield
  except (OSError, ValueError, RuntimeError) as e:
    error = storage_error(e, folder)
    if error is None:
      raise
    raise error from e


def write_text(path: str, text: str) -> None:
  """Writes `path` whole or not at all (a temporary file renamed over it)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any, **kwargs) -> None:
  write_text(path, json.dumps(obj, indent=2, **kwargs))


# --- one process per run directory ---------------------------------------------------------


def holder(workdir: str) -> str | None:
  """The pid recorded by the process that holds `workdir`, or None when none holds it."""
  try:
    fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return os.read(fd, 32).decode(errors='replace').strip() or '?'
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _in_use(workdir: str, pid: str) -> RunInUse:
  return RunInUse(f'{workdir}: in use by another jaxseg process (pid {pid}); wait for it to end '
                  'or choose another --workdir (nothing was changed)')


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir` for this process until the block ends (or the process dies)."""
  fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    pid = os.read(fd, 32).decode(errors='replace').strip() or '?'
    os.close(fd)
    raise _in_use(workdir, pid) from None
  except OSError:  # a file system without locks (some network mounts): run unguarded
    os.close(fd)
    fd = None
  try:
    if fd is not None:
      os.ftruncate(fd, 0)
      os.write(fd, f'{os.getpid()}\n'.encode())
    yield
  finally:
    if fd is not None:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)


def is_empty(workdir: str) -> bool:
  """No run there: the folder is absent, empty, or holds only a lock file."""
  return not os.path.isdir(workdir) or not set(os.listdir(workdir)) - {LOCK_NAME}


def check(workdir: str, resume: bool) -> None:
  """Refuses to overwrite a run, to resume something that is not one, or to enter a directory
  another process holds."""
  check_lock(workdir)
  check_contents(workdir, resume)


def check_lock(workdir: str) -> None:
  """Refuses a directory another process holds."""
  pid = holder(workdir)
  if pid is not None:
    raise _in_use(workdir, pid)


def check_contents(workdir: str, resume: bool) -> None:
  """`check` without asking for the lock (which this process may hold)."""
  if resume and is_empty(workdir):
    raise ConfigError(f'{workdir}: nothing to resume (no run directory there)')
  if resume and not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise ConfigError(f'{workdir}: nothing to resume (no config.json; not a jaxseg run directory)')
  if not resume and not is_empty(workdir):
    raise ConfigError(f'{workdir}: run directory already exists and is not empty; pass --resume '
                      'to continue it or choose another --workdir (nothing was changed)')


def finished_results(workdir: str, total_steps: int) -> dict[str, Any] | None:
  """The results of a run that trained all `total_steps` steps, or None if it has not."""
  try:
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if results.get('steps', -1) >= total_steps else None


def jsonable(obj):
  """`json.dump`'s `default` for results: arrays as lists (NaN as null), NumPy scalars."""
  if isinstance(obj, np.ndarray):
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in obj.tolist()]
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  raise TypeError(f'not JSON serializable: {type(obj)}')
