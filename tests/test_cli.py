"""The ``opomjax`` command: help, dispatch to each kind of subcommand, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from opomjax import cli
from opomjax.models import checkpoints


def test_help_lists_every_subcommand(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  for name in ("protect", "checkpoints", "run", "generate", "evaluate", "baselines"):
    assert f"\n  {name} " in out
  assert cli.main([]) == 2  # no command: the help, as a usage error
  assert "commands:" in capsys.readouterr().err


def test_unknown_command_is_one_line_with_status_2(capsys):
  assert cli.main(["protekt", "--photos", "x"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "unknown command 'protekt'" in err and "protect" in err


def test_checkpoints_subcommand_is_the_registry_tool(capsys):
  assert cli.main(["checkpoints", "list"]) == 0
  out = capsys.readouterr().out
  assert all(f"{name}:" in out for name in checkpoints.load_registry())
  assert cli.main(["checkpoints", "prepare", "no_such_model"]) == 1
  assert "unknown checkpoint 'no_such_model'" in capsys.readouterr().err


def test_missing_subcommand_module_is_a_clear_error(monkeypatch, capsys):
  monkeypatch.setitem(cli.COMMANDS, "protect", cli.Command("opomjax.no_such_module.cli", "x"))
  assert cli.main(["protect", "--help"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'protect' command is not available" in err


@pytest.fixture()
def launchers(tmp_path, monkeypatch):
  """Two stand-in subcommands: an absl application with a flag, and an ``argv -> status`` one that fails."""
  (tmp_path / "fake_launcher.py").write_text(textwrap.dedent('''\
      """A stand-in launcher."""
      from absl import flags
      _STEPS = flags.DEFINE_integer("fake_launcher_steps", 1, "Steps.")
      def main(argv):
        print("steps", _STEPS.value, argv[1:])
        return 3 if _STEPS.value == 3 else None
      '''))
  (tmp_path / "fake_tool.py").write_text(textwrap.dedent('''\
      import argparse
      def main(argv):
        if argv[0] == "--help":  # argparse's --help and usage errors end in SystemExit
          argparse.ArgumentParser(prog="opomjax tool").parse_args(argv)
        if argv[0] == "--bad":
          argparse.ArgumentParser(prog="opomjax tool").parse_args(argv)
        raise FileNotFoundError(f"photos not found: {argv[0]}\\nsecond line")
      '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command("fake_launcher", "absl", absl=True))
  monkeypatch.setitem(cli.COMMANDS, "tool", cli.Command("fake_tool", "argv"))
  monkeypatch.delenv("OPOMJAX_TRACEBACK", raising=False)


def test_absl_subcommands_get_their_flags_and_exit_status(launchers, capsys):
  del launchers
  assert cli.main(["fake", "--fake_launcher_steps=7", "extra"]) == 0
  assert capsys.readouterr().out == "steps 7 ['extra']\n"
  assert cli.main(["fake", "--fake_launcher_steps=3"]) == 3
  assert cli.main(["fake", "--no_such_flag=1"]) != 0
  assert "no_such_flag" in capsys.readouterr().err


def test_input_errors_are_one_line_unless_a_traceback_is_asked(launchers, capsys, monkeypatch):
  del launchers
  assert cli.main(["tool", "--help"]) == 0
  assert cli.main(["tool", "--bad"]) == 2
  capsys.readouterr()
  assert cli.main(["tool", "in/"]) == 1
  assert capsys.readouterr().err == "error: photos not found: in/\n"
  monkeypatch.setenv("OPOMJAX_TRACEBACK", "1")
  with pytest.raises(FileNotFoundError):
    cli.main(["tool", "in/"])


def test_python_dash_m_runs_the_same_command(tmp_path):
  out = subprocess.run([sys.executable, "-m", "opomjax", "--help"], capture_output=True, text=True, cwd=tmp_path,
                       check=True, timeout=120).stdout
  assert out == cli.usage() + "\n"
  bad = subprocess.run([sys.executable, "-m", "opomjax", "nope"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
