"""Metrics written as JSON lines (one object per logged step) and as TensorBoard event files.

TensorBoard files are written with tensorboardX, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


class MetricsWriter:

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._file = open(self.path, 'a')
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # optional: the JSONL file is the record
      self._tb = None

  def write(self, step: int, scalars: dict[str, Any], prefix: str = 'train') -> None:
    """Undefined values (NaN, e.g. HD95 of a structure missing from the prediction) are written
    as null and left out of TensorBoard; a NaN loss never gets here (the loop stops first)."""
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    values = {k: (v if np.isfinite(v) else None) for k, v in values.items()}
    self._file.write(json.dumps({'step': step, 'split': prefix, **values}) + '\n')
    self._file.flush()
    if self._tb is not None:
      for key, value in values.items():
        if value is not None:
          self._tb.add_scalar(f'{prefix}/{key}', value, step)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


class NullWriter:
  """The writer of a process that writes nothing (every process but 0 of a multi-process run)."""

  def write(self, step: int, scalars: dict[str, Any], prefix: str = 'train') -> None:
    del step, scalars, prefix

  def close(self) -> None:
    pass
