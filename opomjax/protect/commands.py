"""What ``opomjax protect`` and ``opomjax protect-video`` share as commands: exit statuses, one-line errors.

Exit statuses: 0 done; 1 an operating-system failure or an unexpected error; 2 a bad argument or input, refused
before any work; 3 incomplete (a photo or frame without the person, left unchanged). Every error is printed as
one ``error: ...`` line; ``OPOMJAX_TRACEBACK=1`` re-raises an unexpected one with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


class UsageError(Exception):
  """A bad argument: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
  """An argument parser that raises :class:`UsageError` instead of printing the usage and exiting."""

  def error(self, message):
    raise UsageError(message)


def one_line(error: BaseException) -> str:
  """The error's message with its whitespace (line breaks included) collapsed to single spaces."""
  return " ".join(str(error).split())


def parse_arguments(parser: argparse.ArgumentParser,
                    argv: Sequence[str]) -> tuple[argparse.Namespace | None, int]:
  """``(args, EXIT_OK)``, or ``(None, status)`` after ``--help`` (0) or a bad argument (2, its line printed)."""
  try:
    return parser.parse_args(list(argv)), EXIT_OK
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return None, EXIT_USAGE
  except SystemExit as e:  # --help
    return None, int(e.code or 0)


def error_status(error: Exception, *, usage: tuple[type, ...] = (ValueError,),
                 incomplete: tuple[type, ...] = ()) -> int:
  """Prints ``error`` as one line and returns its exit status: :data:`EXIT_INCOMPLETE` for ``incomplete`` types,
  :data:`EXIT_USAGE` for ``usage`` types, :data:`EXIT_FAILURE` for an ``OSError`` or anything unexpected (which
  ``OPOMJAX_TRACEBACK=1`` re-raises instead)."""
  if isinstance(error, incomplete + usage + (OSError,)):
    print(f"error: {one_line(error)}", file=sys.stderr)
    if isinstance(error, incomplete):
      return EXIT_INCOMPLETE
    return EXIT_USAGE if isinstance(error, usage) else EXIT_FAILURE
  if os.environ.get("OPOMJAX_TRACEBACK"):
    raise error
  print(f"error: unexpected {type(error).__name__}: {one_line(error)} (set OPOMJAX_TRACEBACK=1 for the traceback)",
        file=sys.stderr)
  return EXIT_FAILURE
