r"""Run the Flower experiment as real processes on this machine: one SuperLink, N SuperNodes.

``python -m privlab.federated.localhost --supernodes 3 --rounds 2 --dataset toy --compare``
starts, each in its own process group,

1. ``flower-superlink --insecure --disable-runtime-dependency-installation --port P``
   (one HTTP port for the Fleet, Control and runtime APIs; its SuperExec starts
   ``flwr-serverapp`` for each run),
2. ``flower-supernode --insecure --superlink 127.0.0.1:P --port Q_k
   --node-config "partition-id=k num-partitions=N"`` for ``k = 0..N-1`` (each on its own
   runtime port; its SuperExec starts a ``flwr-clientapp`` process per message),
3. ``flwr run <flower_project> privlab-localhost --run-config "..." --stream`` with a
   private ``FLWR_HOME`` whose ``config.toml`` names the SuperLink connection,

waits for the ServerApp's ``final.npz`` with a timeout, and always stops every
process group it started (SIGTERM, then SIGKILL), on success, failure, timeout
or Ctrl-C. ``--compare`` also runs :func:`privlab.federated.simulate` with the same
config and prints the largest parameter difference.

Across machines the commands are the same with real addresses: the SuperLink on
a reachable host (``--host 0.0.0.0``, TLS certificates instead of ``--insecure``),
each SuperNode with ``--superlink HOST:PORT`` and its own ``partition-id``, and
``flwr run`` from any machine whose ``FLWR_HOME/config.toml`` points at the SuperLink.

Used in: chapter 8.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from ._procs import stop_processes
from .flower_app import DEFAULT_RUN_CONFIG, FlowerRun, read_flower_outputs

__all__ = ["PROJECT_DIR", "main", "run_localhost", "toml_run_config"]

#: The Flower App folder (``pyproject.toml`` with ``[tool.flwr.app]``).
PROJECT_DIR = Path(__file__).resolve().parent / "flower_project"
CONNECTION = "privlab-localhost"


def toml_run_config(config: Mapping[str, object]) -> str:
    """``key=value`` pairs in TOML syntax for ``flwr run --run-config``.

    >>> toml_run_config({"dataset": "toy", "num-rounds": 2, "mu": 0.0})
    'dataset="toy" num-rounds=2 mu=0.0'
    """
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, deadline: float, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after the startup timeout:\n{_tail(log)}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_localhost(run_config: Mapping[str, object] | None = None, *, num_supernodes: int = 3,
                  timeout: float = 600.0, startup_timeout: float = 120.0, work_dir: str | os.PathLike | None = None,
                  secagg: bool = False, verbose: bool = False) -> FlowerRun:  # fmt: skip
    """Start a SuperLink and ``num_supernodes`` SuperNodes, run the app, stop them all, return the result.

    Args:
        run_config: overrides of :data:`~privlab.federated.flower_app.DEFAULT_RUN_CONFIG`
            (``num-clients`` is set to ``num_supernodes``).
        num_supernodes: SuperNodes (one partition each), at least 1.
        timeout: seconds for the whole run after start-up.
        startup_timeout: seconds for the SuperLink to listen.
        work_dir: where logs, ``FLWR_HOME`` and outputs go (default: a new temp folder, kept).
        secagg: run the SecAgg+ apps (:mod:`~privlab.federated.flower_secagg`): a copy of the
            project whose components name ``secagg_server_app`` and ``secagg_client_app``.
        verbose: echo the ``flwr run`` log stream.

    Returns:
        The :class:`~privlab.federated.flower_app.FlowerRun` read from the outputs.

    Raises:
        TimeoutError: start-up or run exceeded its timeout (all processes are stopped).
        RuntimeError: a process died or the ServerApp wrote no result (log tails attached).

    Used in: chapter 8.
    """
    if num_supernodes < 1:
        raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="privlab-localhost-"))
    home, logs, out = work / "flwr_home", work / "logs", work / "out"
    for d in (home, logs):
        d.mkdir(parents=True, exist_ok=True)
    cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config or {}), "num-clients": num_supernodes, "out-dir": str(out)}
    project = PROJECT_DIR
    if secagg:
        project = work / "flower_project_secagg"
        project.mkdir(exist_ok=True)
        text = (PROJECT_DIR / "pyproject.toml").read_text()
        for side in ("server", "client"):
            text = text.replace(f"privlab.federated.flower_app:{side}_app",
                                f"privlab.federated.flower_secagg:secagg_{side}_app")
        (project / "pyproject.toml").write_text(text)
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')  # fmt: skip
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(home),
           "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=work,
                                          start_new_session=True))  # fmt: skip
        return procs[-1]

    try:
        link = spawn([f"{bin_dir}/flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                      "--port", str(port)], logs / "superlink.log")  # fmt: skip
        _wait_for_port(port, link, time.monotonic() + startup_timeout, logs / "superlink.log")
        for k in range(num_supernodes):
            spawn([f"{bin_dir}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                   "--port", str(_free_port()), "--node-config", f"partition-id={k} num-partitions={num_supernodes}"],
                  logs / f"supernode-{k}.log")  # fmt: skip
        cmd = [f"{bin_dir}/flwr", "run", str(project), CONNECTION, "--run-config", toml_run_config(cfg), "--stream"]
        with open(logs / "flwr-run.log", "wb") as fh:
            run = subprocess.Popen(cmd, stdout=None if verbose else fh, stderr=subprocess.STDOUT, env=env, cwd=work,
                                   start_new_session=True)  # fmt: skip
            procs.append(run)
            deadline = time.monotonic() + timeout
            while not (out / "final.npz").exists():
                dead = [p for p in procs[:-1] if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{dead[0].args[0]} exited with {dead[0].returncode}; logs in {logs}")
                if run.poll() is not None and not (out / "final.npz").exists():
                    time.sleep(2.0)  # the file may land just after the log stream closes
                    if not (out / "final.npz").exists():
                        raise RuntimeError(f"flwr run ended ({run.returncode}) without a result:\n"
                                           f"{_tail(logs / 'flwr-run.log')}\n--- superlink ---\n"
                                           f"{_tail(logs / 'superlink.log')}")  # fmt: skip
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no result after {timeout} s; logs in {logs}")
                time.sleep(0.5)
        return read_flower_outputs(out)
    finally:
        stop_processes(procs, f"FLWR_HOME={home}".encode())


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    import tomllib

    return tomllib.loads("\n".join(pairs)) if pairs else {}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m privlab.federated.localhost",
        description="Run privlab's FedAvg as a Flower SuperLink + SuperNodes on localhost (real processes).")
    parser.add_argument("--supernodes", type=int, default=3, help="number of SuperNodes, one partition each")
    parser.add_argument("--dataset", default="toy", help="toy | hospitals (5 nodes) | cps1988 (4 nodes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dp-noise-multiplier", type=float, default=0.0, help="> 0: Flower's server-side DP")
    parser.add_argument("--secagg", action="store_true", help="Flower's SecAgg+ (legacy-API apps)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help='more run-config overrides in TOML syntax, e.g. local-lr=0.05 dataset="toy"')
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the run (all processes stopped)")
    parser.add_argument("--work-dir", default=None, help="logs, FLWR_HOME and outputs (default: a temp folder)")
    parser.add_argument("--compare", action="store_true", help="also run privlab's in-process FedAvg and compare")
    parser.add_argument("--verbose", action="store_true", help="echo the flwr run log stream")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM still runs the cleanup in `finally`
    cfg = {"dataset": args.dataset, "num-rounds": args.rounds, "dp-noise-multiplier": args.dp_noise_multiplier,
           **_parse_overrides(args.set)}  # fmt: skip
    start = time.perf_counter()
    result = run_localhost(cfg, num_supernodes=args.supernodes, timeout=args.timeout, work_dir=args.work_dir,
                           secagg=args.secagg, verbose=args.verbose)  # fmt: skip
    print(f"Flower run on {args.supernodes} SuperNodes finished in {time.perf_counter() - start:.1f} s")
    print(f"output: {result.history['config']['out-dir']}")
    if "epsilon" in result.history:
        print("cumulative epsilon per round:", [round(e, 4) for e in result.history["epsilon"]])
    if args.compare and (args.dp_noise_multiplier > 0 or args.secagg):
        print("--compare: skipped; DP noise (random) or SecAgg+ quantisation makes the run differ by design")
    elif args.compare:
        from .flower_app import privlab_twin

        twin = privlab_twin({**result.history["config"]})
        diff = max(float((twin[k] - result.state[k]).abs().max()) for k in twin)
        print(f"max |privlab FedAvg - Flower| over all parameters: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
