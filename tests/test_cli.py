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


def test_calibrate_matches_opacus_fact(capsys):
    # StreamRec: N = 5e7, batch 4096, 15 epochs, delta 1e-7 -> sigma 0.879 for epsilon 1 under RDP
    assert main(["calibrate", "--target-epsilon", "1", "--sample-rate", str(4096 / 5e7),
                 "--steps", "183105", "--delta", "1e-7", "--accountant", "rdp"]) == 0
    out = capsys.readouterr().out
    sigma = float(out.split("=")[1].split()[0])
    assert abs(sigma - 0.879) < 0.0015


def test_bad_input_is_a_clear_error_not_a_traceback():
    res = subprocess.run([sys.executable, "-m", "privlab", "epsilon", "--noise-multiplier", "1",
                          "--sample-rate", "1.5", "--steps", "10", "--delta", "1e-5"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "sample_rate" in res.stderr and "1.5" in res.stderr and "Traceback" not in res.stderr
