"""What every launcher in ``experiments/`` shares: bad input ends in one ``error: ...`` line, not a traceback.

  app.run(launcher.one_line_errors(main))

The library checks its input before the first expensive step and raises ``ValueError`` (bad value, a mask
file of other settings, a damaged mask file) or ``FileNotFoundError`` (a missing data set, model or file) with
a message that names the offending flag or config field; the wrapped ``main`` prints that message as
``error: MESSAGE`` on stderr and exits with status 1. The traceback is still logged at debug level
(``--verbosity=1`` shows it). Ctrl-C ends the run with status 130 and says so: finished masks are written
atomically, so the same command resumes.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

from absl import logging

#: Exceptions that mean "bad input" (DatasetNotFoundError is a FileNotFoundError, MaskFileError and the
#: settings mismatch are ValueErrors; a group too large for the memory, runner.GroupOutOfMemoryError, is a
#: MemoryError that names the setting to lower).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               MemoryError)

#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130


def one_line_errors(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """``main`` for ``absl.app.run``, turning bad input into one ``error:`` line and a non-zero exit status."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:
      print("interrupted: every finished mask is saved; run the same command again to resume",
            file=sys.stderr, flush=True)
      sys.exit(INTERRUPTED)
    except USER_ERRORS as e:
      logging.debug("bad input", exc_info=True)
      message = " ".join(str(e).split()) or type(e).__name__
      print(f"error: {message}", file=sys.stderr, flush=True)
      sys.exit(1)

  return wrapped
