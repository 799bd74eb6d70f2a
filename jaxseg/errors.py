"""Errors that reach the user as one line: `error: <what> : <problem>`, exit status 2."""


class JaxsegError(Exception):
  """Base class for problems the user can fix (bad input, bad config)."""


class DataError(JaxsegError):
  """A data file or folder is missing, unreadable or inconsistent; the message names the file."""


class ConfigError(JaxsegError):
  """An unknown experiment, config key or value."""


class TrainingDiverged(JaxsegError):
  """A loss became NaN or Inf; training stopped, the logs, config and last checkpoint are kept."""


class StorageError(JaxsegError):
  """A folder cannot be written (full disk, read-only file system, no permission) or a saved file
  cannot be read back (a corrupt checkpoint); the message names the folder or file."""


class RunInUse(JaxsegError):
  """Another process holds the run directory (see jaxseg/training/rundir.py)."""
