"""The experiment in Flower's simulation engine (Ray): one virtual SuperNode per client, in a child process.

:func:`run_flower_simulation` runs the ClientApp and ServerApp of
:mod:`privlab.federated.flower` (or the SecAgg+ pair) in ``flwr.simulation``,
in a child Python process that is always stopped with every process it started.

Used in: chapter 9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from ._procs import stop_processes
from .task import DEFAULT_RUN_CONFIG, FlowerRun, read_flower_outputs

__all__ = ["RayStartupError", "run_flower_simulation"]


def _simulate_here(cfg: dict, *, num_cpus: int, secagg: bool, verbose: bool) -> None:
    """Run Flower's simulation engine in this process (the child :func:`run_flower_simulation` starts)."""
    from flwr.simulation import run_simulation

    if secagg:
        from .secaggplus import make_secagg_client_app, make_secagg_server_app

        server, client = make_secagg_server_app(cfg), make_secagg_client_app(cfg)
    else:
        from .client_app import make_client_app
        from .server_app import make_server_app

        server, client = make_server_app(cfg), make_client_app(cfg)
    run_simulation(
        server_app=server, client_app=client, num_supernodes=int(cfg["num-clients"]),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": int(num_cpus), "logging_level": "error", "log_to_driver": False}},
        verbose_logging=verbose,
    )  # fmt: skip


def run_flower_simulation(run_config: Mapping[str, object] | None = None, *, num_cpus: int = 2,
                          secagg: bool = False, timeout: float = 900.0, retries: int = 2,
                          verbose: bool = False) -> FlowerRun:  # fmt: skip
    """Run the experiment in Flower's simulation engine (Ray), one virtual SuperNode per client.

    The engine runs in a child Python process that is stopped, with every process
    it started (Ray's servers and actors), as soon as the ServerApp has written its
    result, when Ray's start-up crashes (on an overloaded machine Flower's driver
    then hangs instead of exiting), or at ``timeout``. Ray gives its raylet a fixed
    30 s to register; on a busy machine that fails now and then, and the run is
    retried up to ``retries`` times.

    Args:
        run_config: overrides of :data:`DEFAULT_RUN_CONFIG`.
        num_cpus: CPUs given to Ray (each ClientApp gets one).
        secagg: use the SecAgg+ apps (:mod:`privlab.federated.flower.secaggplus`).
        timeout: seconds per attempt. retries: further attempts after a Ray start-up timeout.
        verbose: echo Flower's log.

    Returns:
        The :class:`FlowerRun` (final parameters by name, history).

    Raises:
        RuntimeError: the simulation crashed (with the log's tail). TimeoutError: it took too long.

    Used in: chapter 9.
    """
    cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config or {})}
    for attempt in range(retries + 1):
        try:
            return _simulate_in_child(cfg, num_cpus=num_cpus, secagg=secagg, timeout=timeout, verbose=verbose)
        except RayStartupError:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


class RayStartupError(RuntimeError):
    """Ray's raylet did not register within Ray's fixed 30 s (a busy machine)."""


def _simulate_in_child(cfg: dict, *, num_cpus: int, secagg: bool, timeout: float, verbose: bool) -> FlowerRun:
    tag = uuid.uuid4().hex
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PRIVLAB_FLOWER_RUN": tag}
    with tempfile.TemporaryDirectory(prefix="privlab-flower-") as tmp:
        cfg = {**cfg, "out-dir": cfg["out-dir"] or str(Path(tmp) / "out")}
        out, log = Path(str(cfg["out-dir"])), Path(tmp) / "simulation.log"
        cmd = [sys.executable, "-m", "privlab.federated.flower.simulation", json.dumps(cfg), str(int(num_cpus)),
               "secagg" if secagg else "fedavg", "verbose" if verbose else "quiet"]  # fmt: skip
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=None if verbose else fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while not (out / "final.npz").exists():
                text = log.read_text(errors="replace") if log.exists() else ""
                if "An exception occurred" in text or "Simulation Runtime crashed" in text or proc.poll() is not None:
                    time.sleep(1.0)
                    if not (out / "final.npz").exists():
                        kind = RayStartupError if "timed out during startup" in text else RuntimeError
                        raise kind(f"Flower's simulation failed:\n{text[-4000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Flower's simulation gave no result in {timeout} s")
                time.sleep(0.5)
            return read_flower_outputs(out)
        finally:
            stop_processes([proc], f"PRIVLAB_FLOWER_RUN={tag}".encode(), grace=5.0)


if __name__ == "__main__":  # the child process of run_flower_simulation
    _simulate_here(json.loads(sys.argv[1]), num_cpus=int(sys.argv[2]), secagg=sys.argv[3] == "secagg",
                   verbose=sys.argv[4] == "verbose")
    os._exit(0)  # do not wait for Ray's threads: the parent reads the result from out-dir
