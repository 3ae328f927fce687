"""The command line answers --help and its subcommands."""

import math
import re
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


import json  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

from privlab.accounting import dpsgd_epsilon  # noqa: E402


@pytest.mark.parametrize("command", ["info", "epsilon", "calibrate", "streamrec", "cliff", "chapters"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: privlab " + command)
    if command != "chapters":
        assert "--json" in out


def test_epsilon_json_from_batch_shape_equals_the_library(capsys):
    # B = 256 of N = 25,600 for 100 epochs: q = 0.01, T = 10,000 steps
    assert main(["epsilon", "--noise-multiplier", "1.1", "--batch-size", "256", "--dataset-size", "25600",
                 "--epochs", "100", "--accountant", "pld", "rdp", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sample_rate"] == 0.01 and doc["steps"] == 10_000 and doc["delta"] == 1e-5
    for name in ("pld", "rdp"):
        assert doc["epsilon"][name] == dpsgd_epsilon(noise_multiplier=1.1, sample_rate=0.01, steps=10_000,
                                                     delta=1e-5, accountant=name)
    assert doc["epsilon"]["pld"] < doc["epsilon"]["rdp"]


def test_calibrate_json_meets_its_target(capsys):
    assert main(["calibrate", "--target-epsilon", "2", "--sample-rate", "0.01", "--steps", "1000", "--json"]) == 0
    sigma = json.loads(capsys.readouterr().out)["noise_multiplier"]["pld"]
    eps = dpsgd_epsilon(noise_multiplier=sigma, sample_rate=0.01, steps=1000, delta=1e-5)
    assert 1.95 < eps <= 2.0 + 1e-9


@pytest.mark.parametrize("argv, needle", [
    (["epsilon", "--noise-multiplier", "1", "--steps", "10"], "--sample-rate and --steps go together"),
    (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--epochs", "2"], "either"),
    (["calibrate", "--target-epsilon", "1", "--batch-size", "500", "--dataset-size", "100", "--epochs", "1"],
     "batch_size must be in (0, dataset_size=100], got 500"),
    (["calibrate", "--target-epsilon", "-1", "--sample-rate", "0.1", "--steps", "10"], "-1"),
    (["cliff", "--sigmas", "-1"], "got -1"),
    (["cliff", "--epochs", "0"], "epochs"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_cliff_json_runs_the_sweep_and_writes_results(tmp_path, capsys):
    assert main(["cliff", "--sigmas", "0.5", "10", "--clip-norms", "1", "--seeds", "42", "--epochs", "3",
                 "--out", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == 3  # two DP runs and one baseline
    assert [row["sigma"] for row in doc["summary"]] == [0.5, 10.0]
    eps = [row["epsilon"] for row in doc["summary"]]
    assert eps[0] > eps[1] > 0
    assert all(doc["checks"][k] for k in ("dp_run_count", "baseline_run_count", "epsilon_decreasing_in_sigma"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 3


def test_cliff_text_output(capsys):
    assert main(["cliff", "--mode", "corrected", "--sigmas", "1", "--clip-norms", "1", "--seeds", "42",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "runs on blobs (corrected mode)" in out and "checks:" in out


def test_distributed_subcommand_is_the_module_entry_point(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distributed", "--help"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage: privlab distributed")
    # without torchrun: one process, the same run as python -m privlab.dpsgd.distributed
    argv = ["--examples", "64", "--features", "4", "--hidden", "8", "--epochs", "1", "--batch-size", "16",
            "--out", str(tmp_path / "run.json")]
    assert main(["distributed", *argv]) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["world_size"] == 1 and run["steps"] == 4 and math.isfinite(run["epsilon"])


def test_text_output_names_the_run_it_accounted(capsys):
    # N = 1100, B = 300, 3 epochs: ceil(E N / B) = 11 steps (Opacus's convention), printed so that a
    # reader can compare it with privlab.dpsgd.train's 3 round(N / B) = 12
    assert main(["epsilon", "--noise-multiplier", "1", "--batch-size", "300", "--dataset-size", "1100",
                 "--epochs", "3"]) == 0
    assert "q = 0.272727, T = 11)" in capsys.readouterr().out
    assert main(["calibrate", "--target-epsilon", "1", "--sample-rate", "0.01", "--steps", "12"]) == 0
    assert "(delta = 1e-05; q = 0.01, T = 12)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--batch-size", "10", "--dataset-size", "100", "--epochs", "nan"], "epochs must be a positive finite number"),
    (["--batch-size", "10", "--dataset-size", "100", "--epochs", "1e30"], "more than 10\\^9"),
])
def test_edge_epochs_are_clear_errors_not_tracebacks(argv, match, capsys):
    # NaN epochs failed with "cannot convert float NaN to integer", 1e30 with an OverflowError traceback
    with pytest.raises(SystemExit):
        main(["epsilon", "--noise-multiplier", "1", *argv])
    assert re.search(match, capsys.readouterr().err)


def test_a_noise_multiplier_whose_square_underflows_is_refused():
    from privlab.accounting import dpsgd_epsilon

    with pytest.raises(ValueError, match="too small: 2 sigma\\^2 underflows"):
        dpsgd_epsilon(noise_multiplier=1e-300, sample_rate=0.1, steps=10, delta=1e-5)


def test_red_team_cli_findings(capsys):
    """A red-team read: sigma = 1e-160 printed epsilon 0.83 (RDP's 1/(2 sigma^2) overflowed and was clipped
    to 0); 1e21 steps and NaN in lm --epsilons were a traceback or silently dropped; delta >= 1/N passed
    without a word."""
    assert main(["epsilon", "--noise-multiplier", "1e-160", "--sample-rate", "0.01", "--steps", "100",
                 "--accountant", "rdp"]) == 0
    assert "epsilon = inf" in capsys.readouterr().out
    for argv, match in [
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "1000000000000000000000"],
         "steps must be at most 1e\\+12"),
        (["lm", "--scale", "smoke", "--epsilons", "1", "nan"], "each of --epsilons must be a number > 0, got nan"),
    ]:
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        assert re.search(match, capsys.readouterr().err)
    assert main(["epsilon", "--noise-multiplier", "1.1", "--batch-size", "256", "--dataset-size", "1000000",
                 "--epochs", "1"]) == 0
    assert "warning: delta = 1e-05 >= 1/N = 1e-06" in capsys.readouterr().err
