"""Puts the next batch on the device while the current step runs.

`DevicePrefetch` wraps the paired host iterator: the loop takes batch n, dispatches step n (JAX
returns at once), then calls `prefetch()`, which reads batch n + 1 and starts its transfer while
step n computes. The saved iterator position stays the one of the batches the loop has taken:
`get_state()` answers with the position from before the prefetched batch was read, so a
checkpoint never skips the batch that was on its way when the run stopped.
"""

from __future__ import annotations

import copy
from typing import Any, Callable


class DevicePrefetch:
  """`next()` gives `put(batch)` for each batch of `batches` (an iterator with get/set_state)."""

  def __init__(self, batches, put: Callable[[Any], Any]):
    self.batches = batches
    self.put = put
    self._next = None  # (position before it was read, device batch)

  def __iter__(self):
    return self

  def prefetch(self) -> None:
    if self._next is None:
      position = copy.deepcopy(self.batches.get_state())
      self._next = (position, self.put(next(self.batches)))

  def __next__(self):
    self.prefetch()
    _, batch = self._next
    self._next = None
    return batch

  def get_state(self) -> dict[str, Any]:
    """The position of the first batch the loop has not taken."""
    if self._next is not None:
      return self._next[0]
    return self.batches.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._next = None
    self.batches.set_state(state)
