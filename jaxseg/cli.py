"""What every command line (`jaxseg.run`, `.evaluate`, `.predict`, `.report`, `.compare`,
`.reproduce`, `.data.check`) does with a problem the user can fix: one `error: ...` line on
stderr and exit status 2.

A command's `main(argv) -> int` raises `JaxsegError` (jaxseg/errors.py) for such problems and
is wrapped once with `@cli.command`; anything else (a bug, Ctrl-C's KeyboardInterrupt, argparse's
own exit) goes on unchanged, with its traceback, so that it is never mistaken for bad input.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Sequence

from jaxseg.errors import JaxsegError

# Exit status of a command stopped by bad input, bad config or a failed write (a JaxsegError).
USER_ERROR = 2


def print_error(error: JaxsegError) -> None:
  """The one line a JaxsegError reaches the user as."""
  print(f'error: {error}', file=sys.stderr, flush=True)


def command(main: Callable[[list[str]], int]) -> Callable[[Sequence[str] | None], int]:
  """`main(argv) -> exit status` as a command: argv defaults to the process's own arguments,
  and a JaxsegError ends it as one `error:` line with exit status 2."""

  @functools.wraps(main)
  def wrapped(argv: Sequence[str] | None = None) -> int:
    try:
      return main(sys.argv[1:] if argv is None else list(argv))
    except JaxsegError as e:
      print_error(e)
      return USER_ERROR

  return wrapped


def parser(module: str, doc: str, *, run_dir: bool = False) -> argparse.ArgumentParser:
  """`python -m MODULE`'s parser, described by the first line of its docstring `doc`. With
  `run_dir`, the options of the commands that read a finished run: `--workdir` and
  `--no-progress`."""
  parser = argparse.ArgumentParser(prog=f'python -m {module}', description=doc.split('\n')[0])
  if run_dir:
    parser.add_argument('--workdir', required=True, help='run directory written by jaxseg.run')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
  return parser
