"""The command line answers --help and its subcommands."""

import subprocess
import sys

from privlab.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "chapters" in out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "privlab", "info", "--scale", "smoke"],
                         capture_output=True, text=True, check=True).stdout
    assert "scale: smoke" in out
