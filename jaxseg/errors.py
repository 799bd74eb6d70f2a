"""Errors that reach the user as one line: `error: <what> : <problem>`, exit status 2."""


class JaxsegError(Exception):
  """Base class for problems the user can fix (bad input, bad config)."""


class DataError(JaxsegError):
  """A data file or folder is missing, unreadable or inconsistent; the message names the file."""


class ConfigError(JaxsegError):
  """An unknown experiment, config key or value."""


class TrainingDiverged(JaxsegError):
  """A loss became NaN or Inf; training stopped and the last good checkpoint was kept."""
