"""The ``opomjax`` command: one entry point, one subcommand per job.

  opomjax protect --photos my_photos/ --out protected/     # protect your own photos (one mask per person)
  opomjax protect-video --video clip.mp4 --mask protected/mask.npz --out clip_protected.mp4   # and a video
  opomjax checkpoints list                                 # the model registry and what this machine has
  opomjax run --config.dataset.num_identities=0            # the main experiment job
  python -m opomjax ...                                    # the same without the console script

Each subcommand is a module with a ``main``; it is imported only when asked for, so ``opomjax --help`` is
instant and works even where a subcommand's dependencies are missing. ``protect``, ``protect-video`` and
``checkpoints`` take their arguments as ``main(argv)`` (argv without the program name) and return the exit
status; ``run``, ``generate``, ``evaluate`` and ``baselines`` are absl applications (flags such as
``--config.steps=4``).

Errors about input (a missing or unreadable file, a bad value) print one ``error: ...`` line and exit with
status 1; set ``$OPOMJAX_TRACEBACK=1`` to see the traceback instead. Usage errors exit with status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
from typing import Sequence

PROG = "opomjax"


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: the module whose ``main`` runs it, a one-line summary and how it takes its arguments."""

  module: str
  summary: str
  absl: bool = False


#: subcommand -> how to run it (in the order ``--help`` lists them).
COMMANDS: dict[str, Command] = {
    "protect": Command("opomjax.protect.cli", "protect a person's own photos with one mask (or reuse a saved one)"),
    "protect-video": Command("opomjax.protect.video", "add a person's saved mask to their face in every frame of "
                             "a video (audio kept)"),
    "checkpoints": Command("opomjax.models.checkpoints",
                           "list the model registry; verify and cache weight files (list | prepare NAME)"),
    "run": Command("experiments.run", "the main job: generate masks, evaluate them, write the report", absl=True),
    "generate": Command("experiments.generate", "generate one mask per identity for each method of a config",
                        absl=True),
    "evaluate": Command("experiments.evaluate", "evaluate the masks of a workdir against the targets", absl=True),
    "baselines": Command("experiments.baselines", "clean identification accuracy of each model (no masks)",
                         absl=True),
}


def usage() -> str:
  """The ``--help`` text: synopsis and the subcommands with their summaries."""
  width = max(map(len, COMMANDS))
  lines = [f"usage: {PROG} COMMAND [ARGS...]   (also: python -m opomjax COMMAND ...)", "",
           "One Person One Mask (OPOM) privacy masks in JAX.", "", "commands:"]
  lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
  lines += ["", f"{PROG} COMMAND --help shows a command's own options; {PROG} --version prints the version."]
  return "\n".join(lines)


def _error(message: str, status: int) -> int:
  print(f"error: {message}", file=sys.stderr)
  return status


def _import(name: str, command: Command):
  """The subcommand's module, or None after printing why it cannot be loaded."""
  try:
    return importlib.import_module(command.module)
  except ModuleNotFoundError as e:
    if e.name and (command.module + ".").startswith(e.name + "."):  # the command's module or package is absent
      _error(f"the {name!r} command is not available in this installation (no module {command.module})", 1)
    else:
      _error(f"the {name!r} command cannot start: {e} (install the package's requirements)", 1)
  except ImportError as e:
    _error(f"the {name!r} command cannot start: {e}", 1)
  return None


def _run(name: str, command: Command, args: list[str]) -> int:
  module = _import(name, command)
  if module is None:
    return 1
  try:
    if not command.absl:
      return int(module.main(args) or 0)
    from absl import app  # pylint: disable=import-outside-toplevel

    with _absl_help_of(module):
      app.run(module.main, argv=[f"{PROG} {name}", *args])
  except SystemExit as e:  # app.run always ends with one; argparse's --help and usage errors too
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)  # sys.exit("message"): the message is the error
    return 1
  return 0


@contextlib.contextmanager
def _absl_help_of(module):
  """Lets absl's ``--help`` describe ``module``: it prints ``__main__``'s docstring and the flags defined in
  the module named by ``sys.argv[0]``, which here are the dispatcher's."""
  main_module = sys.modules["__main__"]
  saved_doc, saved_argv = main_module.__doc__, sys.argv
  main_module.__doc__, sys.argv = module.__doc__, [module.__name__, *sys.argv[1:]]
  try:
    yield
  finally:
    main_module.__doc__, sys.argv = saved_doc, saved_argv


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``opomjax COMMAND ARGS...``; returns the exit status.

  Args:
    argv: the arguments without the program name (default: ``sys.argv[1:]``).
  """
  args = list(sys.argv[1:] if argv is None else argv)
  if not args:
    print(usage(), file=sys.stderr)
    return 2
  first, rest = args[0], args[1:]
  if first in ("-h", "--help", "help"):
    print(usage())
    return 0
  if first == "--version":
    from opomjax import __version__  # pylint: disable=import-outside-toplevel

    print(f"{PROG} {__version__}")
    return 0
  if first not in COMMANDS:
    return _error(f"unknown command {first!r}; choose from {', '.join(COMMANDS)} (see {PROG} --help)", 2)
  try:
    return _run(first, COMMANDS[first], rest)
  except KeyboardInterrupt:
    return _error("interrupted", 130)
  except BrokenPipeError:  # output piped into a reader that stopped (| head): not an error of the command
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
    return 1
  except (OSError, ValueError) as e:  # bad input that a subcommand did not report itself
    if os.environ.get("OPOMJAX_TRACEBACK"):
      raise
    return _error(str(e).splitlines()[0] if str(e) else type(e).__name__, 1)


if __name__ == "__main__":
  sys.exit(main())
