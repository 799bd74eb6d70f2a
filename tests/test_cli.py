"""`jaxseg.cli`: a command's JaxsegError is one `error:` line and exit 2; everything else (a bug,
Ctrl-C, argparse's own exit) goes on with its traceback; and no module below the command lines
imports one of them."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

from jaxseg import cli
from jaxseg.errors import DataError

from conftest import call, error_line

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'jaxseg'
COMMANDS = {'jaxseg.run', 'jaxseg.evaluate', 'jaxseg.predict', 'jaxseg.report', 'jaxseg.compare',
            'jaxseg.reproduce', 'jaxseg.data.check'}


@cli.command
def _command(argv):
  """Echoes its arguments; `fail` raises a user error, `bug` a plain one, `stop` is Ctrl-C."""
  if 'fail' in argv:
    raise DataError('/some/file: unreadable')
  if 'bug' in argv:
    raise ValueError('a bug')
  if 'stop' in argv:
    raise KeyboardInterrupt
  print(' '.join(argv))
  return 0


def test_a_user_error_is_one_line_and_exit_2():
  rc, out, err = call(_command, ['fail'])
  assert error_line(rc, err, '/some/file: unreadable') == 'error: /some/file: unreadable'
  assert out == ''


def test_success_and_argv_from_the_command_line(monkeypatch, capsys):
  assert _command(['a', 'b']) == 0
  monkeypatch.setattr(sys, 'argv', ['prog', 'x', 'y'])
  assert _command() == 0
  assert capsys.readouterr().out.splitlines() == ['a b', 'x y']


def test_bugs_and_ctrl_c_are_not_user_errors():
  with pytest.raises(ValueError, match='a bug'):
    _command(['bug'])
  with pytest.raises(KeyboardInterrupt):
    _command(['stop'])


def _imports(path: pathlib.Path) -> set[str]:
  """Every jaxseg module `path` imports, function-local imports included."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
  return {n for n in names if n.startswith('jaxseg')}


def test_no_library_module_imports_a_command_line():
  for path in PACKAGE.rglob('*.py'):
    module = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    if module in COMMANDS:
      continue
    assert not _imports(path) & COMMANDS, (module, _imports(path) & COMMANDS)


def test_the_parser_of_a_command_that_reads_a_run(capsys):
  parser = cli.parser('jaxseg.example', 'Does one thing.\n\nAt length.', run_dir=True)
  assert parser.prog == 'python -m jaxseg.example' and parser.description == 'Does one thing.'
  args = parser.parse_args(['--workdir', 'w', '--no-progress'])
  assert args.workdir == 'w' and args.no_progress
  with pytest.raises(SystemExit) as stopped:  # argparse's own usage error, exit 2
    parser.parse_args([])
  assert stopped.value.code == 2 and '--workdir' in capsys.readouterr().err
