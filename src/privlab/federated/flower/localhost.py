r"""Run the Flower experiment as real processes on this machine: one SuperLink, N SuperNodes.

``privlab localhost --supernodes 3 --rounds 2 --dataset toy --compare`` (or
``python -m privlab.federated.flower.localhost ...``)
starts, each in its own process group,

1. ``flower-superlink --insecure --disable-runtime-dependency-installation --port P``
   (one HTTP port for the Fleet, Control and runtime APIs; its SuperExec starts
   ``flwr-serverapp`` for each run),
2. ``flower-supernode --insecure --superlink 127.0.0.1:P --port Q_k
   --node-config "partition-id=k num-partitions=N"`` for ``k = 0..N-1`` (each on its own
   runtime port; its SuperExec starts a ``flwr-clientapp`` process per message),
3. ``flwr run <project> privlab-localhost --run-config "..." --stream`` with a
   private ``FLWR_HOME`` whose ``config.toml`` names the SuperLink connection,

waits for the ServerApp's ``final.npz`` with a timeout, and always stops every
process group it started (SIGTERM, then SIGKILL), on success, failure, timeout
or Ctrl-C. :class:`LocalFederation` keeps the SuperLink and SuperNodes up for
several runs, one after another (:meth:`LocalFederation.run`) or side by side
(:meth:`LocalFederation.submit`): a SuperLink serves any number of runs, and Flower
starts fresh ServerApp and ClientApp processes for each. That is how the tests run
FedAvg, server-side DP and SecAgg+ on one start-up, at the same time. ``--compare`` also runs
:func:`privlab.federated.simulate` with the same config and prints the largest
parameter difference.

Across machines the commands are the same with real addresses: the SuperLink on
a reachable host (``--host 0.0.0.0``, TLS certificates instead of ``--insecure``),
each SuperNode with ``--superlink HOST:PORT`` and its own ``partition-id``, and
``flwr run`` from any machine whose ``FLWR_HOME/config.toml`` points at the SuperLink.

Used in: chapter 9.
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
import warnings
from collections.abc import Mapping
from pathlib import Path

from ._procs import _descendants, stop_processes
from .task import DEFAULT_RUN_CONFIG, FlowerRun, check_secagg_config, privlab_twin, read_flower_outputs

__all__ = ["PROJECT_DIR", "SECAGG_PROJECT_DIR", "LocalFederation", "PendingRun", "main", "run_localhost",
           "toml_run_config"]

#: The Flower App folder (``pyproject.toml`` with ``[tool.flwr.app]``), shipped as package data.
PROJECT_DIR = Path(__file__).resolve().parent / "project"
#: The same App with the SecAgg+ components (:mod:`privlab.federated.flower.secaggplus`).
SECAGG_PROJECT_DIR = Path(__file__).resolve().parent / "project_secagg"
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


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now: all bound at once, so the OS cannot hand one out twice.

    Another process may still take one before our server binds it; :meth:`LocalFederation.start`
    then starts that server again on a new port (see :data:`PORT_ATTEMPTS`).
    """
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.socket())
            socks[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: How many times a SuperLink or SuperNode is started, on a fresh port each time, when the port it was
#: given was taken in the meantime ("address already in use" in its log, e.g. by a federation that
#: another process started at the same moment).
PORT_ATTEMPTS = 3


class _PortTaken(RuntimeError):
    """A server exited at start-up because its port was already in use."""


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on ``port``, IPv4 and IPv6 (Linux ``/proc/net/tcp``, ``tcp6``);
    ``None`` where neither can be read (no ``/proc``)."""
    found, read = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            f = line.split()  # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(f[9])
    return found if read else None


def _listens(proc: subprocess.Popen, port: int) -> bool:
    """Does ``proc`` itself listen on ``port``? Not merely "something does": when another process took the
    port, a connection succeeds while ours is about to exit. Without ``/proc``: whether anything listens."""
    inodes = _listening_inodes(port)
    if inodes is None:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    for pid in [proc.pid, *_descendants([proc.pid])]:  # the server, or a process it started
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


def _wait_for_port(port: int, proc: subprocess.Popen, deadline: float, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _tail(log)
            error = _PortTaken if "address already in use" in tail.lower() else RuntimeError
            raise error(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")
        if _listens(proc, port):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after the startup timeout:\n{_tail(log)}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalFederation:
    """A SuperLink and ``num_supernodes`` SuperNodes on localhost that run one Flower run after another.

    The SuperLink and SuperNodes are long-lived; each :meth:`run` (or :meth:`submit`,
    which does not wait) submits the project with ``flwr run`` (Flower starts a fresh
    ServerApp and ClientApp processes per run), so several experiments (FedAvg,
    server-side DP, SecAgg+) share one start-up, and can run side by side. Use it as a context manager: leaving it stops every process it
    started (SIGTERM, then SIGKILL), on success, failure, timeout or Ctrl-C.

    Args:
        num_supernodes: SuperNodes (one partition each), at least 1.
        startup_timeout: seconds for the SuperLink and every SuperNode to listen.
        work_dir: where logs, ``FLWR_HOME`` and outputs go (default: a new temp folder, kept).
    """

    def __init__(self, num_supernodes: int = 3, *, startup_timeout: float = 120.0,
                 work_dir: str | os.PathLike | None = None) -> None:  # fmt: skip
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        self.num_supernodes, self.startup_timeout = num_supernodes, startup_timeout
        self.work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="privlab-localhost-"))
        self.home, self.logs = self.work / "flwr_home", self.work / "logs"
        self.procs: list[subprocess.Popen] = []
        self._submitted: list[subprocess.Popen] = []  # the `flwr run` processes among self.procs
        self._failed: list[subprocess.Popen] = []  # servers that lost their port at start-up (exited)
        self._ports: set[int] = set()  # every port handed to a server of this federation
        self.runs = 0
        bin_dir = str(Path(sys.executable).parent)
        self._bin = bin_dir
        self._env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                     "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip

    @property
    def marker(self) -> bytes:
        """The environment entry every process of this federation carries (our private ``FLWR_HOME``)."""
        return f"FLWR_HOME={self.home}".encode()

    def _spawn(self, cmd: list[str], log: Path, echo: bool = False) -> subprocess.Popen:
        with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
            self.procs.append(subprocess.Popen(cmd, stdout=None if echo else fh, stderr=subprocess.STDOUT,
                                               env=self._env, cwd=self.work, start_new_session=True))  # fmt: skip
        return self.procs[-1]

    def start(self) -> LocalFederation:
        """Start the SuperLink, wait until it listens, then start the SuperNodes and wait until each listens.

        Every server gets its own free port; one whose port was taken before it could bind it is
        started again on a new port (up to :data:`PORT_ATTEMPTS` times; the failed attempt's log is
        kept as ``<name>.attempt<k>.log`` and a warning says so).
        """
        for d in (self.home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.startup_timeout
        try:
            port = self._start_listening(self._spawn_superlink, self.logs / "superlink.log", deadline)
            (self.home / "config.toml").write_text(
                f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                f'address = "127.0.0.1:{port}"\ninsecure = true\n')  # fmt: skip
            n = self.num_supernodes
            # all spawned before any is waited for (they start in parallel), each on a distinct port
            nodes = [(self._spawn_supernode(k, n, port, q), q) for k, q in enumerate(self._new_ports(n))]
            for k, (proc, q) in enumerate(nodes):
                log = self.logs / f"supernode-{k}.log"
                self._start_listening(lambda p, k=k: self._spawn_supernode(k, n, port, p), log, deadline, proc, q)
        except BaseException:
            self.close()
            raise
        return self

    def _new_ports(self, n: int) -> list[int]:
        """``n`` free ports, none handed out before by this federation (a server given one may not have
        bound it yet, so the OS could offer it again)."""
        for _ in range(100):
            ports = _free_ports(n)
            if not self._ports.intersection(ports):
                self._ports.update(ports)
                return ports
        raise RuntimeError(f"no {n} free ports outside the {len(self._ports)} this federation handed out")

    def _spawn_superlink(self, port: int) -> subprocess.Popen:
        return self._spawn([f"{self._bin}/flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                            "--port", str(port)], self.logs / "superlink.log")  # fmt: skip

    def _spawn_supernode(self, k: int, n: int, superlink_port: int, port: int) -> subprocess.Popen:
        return self._spawn([f"{self._bin}/flower-supernode", "--insecure", "--superlink",
                            f"127.0.0.1:{superlink_port}", "--port", str(port),
                            "--node-config", f"partition-id={k} num-partitions={n}"],
                           self.logs / f"supernode-{k}.log")  # fmt: skip

    def _start_listening(self, spawn, log: Path, deadline: float, proc: subprocess.Popen | None = None,
                         port: int | None = None) -> int:  # fmt: skip
        """Wait until ``proc`` (spawned by ``spawn(port)``, now if ``None``) listens on ``port``; on a taken
        port, spawn it again on a fresh one. Returns the port it listens on."""
        tried = []
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if proc is None:
                port = self._new_ports(1)[0]
                proc = spawn(port)
            tried.append(port)
            try:
                _wait_for_port(port, proc, deadline, log)
                return port
            except _PortTaken as err:
                self.procs.remove(proc)
                self._failed.append(proc)  # its process group is still stopped by close()
                if attempt == PORT_ATTEMPTS:
                    raise _PortTaken(f"{err}\nports tried, each taken before it could bind: {tried}") from None
                kept = log.with_name(f"{log.stem}.attempt{attempt}{log.suffix}")
                log.replace(kept)
                warnings.warn(f"{proc.args[0]}: port {port} was taken before it could bind it; starting it again "
                              f"on a fresh port (log of the failed attempt: {kept})", RuntimeWarning, stacklevel=3)
                proc = None
        raise AssertionError("unreachable")

    def submit(self, run_config: Mapping[str, object] | None = None, *, timeout: float = 600.0,
               secagg: bool = False, verbose: bool = False) -> PendingRun:  # fmt: skip
        """Submit one run with ``flwr run`` and return at once; :meth:`PendingRun.result` waits for it.

        The SuperLink serves several runs at the same time (each with its own run id, ServerApp
        process and ClientApp processes), so runs submitted one after another proceed side by
        side: most of a small run's wall clock is Flower's polling and process start-up.

        Args:
            run_config: overrides of :data:`~privlab.federated.flower.task.DEFAULT_RUN_CONFIG`
                (``num-clients`` is set to the number of SuperNodes, ``out-dir`` to a new folder).
            timeout: seconds for this run, counted from its submission.
            secagg: run the SecAgg+ apps (:mod:`~privlab.federated.flower.secaggplus`, the
                project :data:`SECAGG_PROJECT_DIR`).
            verbose: echo the ``flwr run`` log stream.
        """
        if secagg:  # before any process is asked to run it
            check_secagg_config({**DEFAULT_RUN_CONFIG, **dict(run_config or {})})
        if not self.procs:
            raise RuntimeError("the federation is not running: call start() or use it in a with block")
        self.runs += 1
        out, log = self.work / f"run-{self.runs}" / "out", self.logs / f"flwr-run-{self.runs}.log"
        cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config or {}), "num-clients": self.num_supernodes, "out-dir": str(out)}
        project = SECAGG_PROJECT_DIR if secagg else PROJECT_DIR
        cmd = [f"{self._bin}/flwr", "run", str(project), CONNECTION, "--run-config", toml_run_config(cfg), "--stream"]
        servers = [p for p in self.procs if p not in self._submitted]
        proc = self._spawn(cmd, log, echo=verbose)
        self._submitted.append(proc)
        return PendingRun(self, proc, servers, out, log, time.monotonic() + timeout, timeout)

    def run(self, run_config: Mapping[str, object] | None = None, *, timeout: float = 600.0, secagg: bool = False,
            verbose: bool = False) -> FlowerRun:  # fmt: skip
        """Submit one run with ``flwr run``, wait for the ServerApp's ``final.npz``, return the result.

        Arguments as :meth:`submit`.

        Raises:
            TimeoutError: the run exceeded ``timeout`` (the federation keeps running; leave the
                ``with`` block to stop it). RuntimeError: a process died or the ServerApp wrote no result.
        """
        return self.submit(run_config, timeout=timeout, secagg=secagg, verbose=verbose).result()

    def close(self) -> None:
        """Stop every process this federation started (idempotent)."""
        procs, self.procs, self._submitted = self.procs + self._failed, [], []
        self._failed = []
        if procs:
            stop_processes(procs, self.marker)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class PendingRun:
    """A run submitted by :meth:`LocalFederation.submit`; :meth:`result` waits for it (once) and returns it."""

    def __init__(self, federation: LocalFederation, proc: subprocess.Popen, servers: list[subprocess.Popen],
                 out: Path, log: Path, deadline: float, timeout: float) -> None:  # fmt: skip
        self._fed, self._proc, self._servers = federation, proc, servers
        self.out, self.log, self._deadline, self._timeout = out, log, deadline, timeout
        self._result: FlowerRun | None = None
        self._error: BaseException | None = None

    def result(self) -> FlowerRun:
        """Wait for the ServerApp's ``final.npz`` and read it; later calls return (or raise) the same.

        Raises:
            TimeoutError: no result within the run's timeout from its submission.
            RuntimeError: a SuperLink or SuperNode died, or ``flwr run`` ended without a result.
        """
        if self._result is None and self._error is None:
            try:
                self._result = self._wait()
            except BaseException as err:
                self._error = err
        if self._error is not None:
            raise self._error
        return self._result

    def _wait(self) -> FlowerRun:
        fed, run, out, log = self._fed, self._proc, self.out, self.log
        try:
            while not (out / "final.npz").exists():
                dead = [p for p in self._servers if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{dead[0].args[0]} exited with {dead[0].returncode}; logs in {fed.logs}")
                if run.poll() is not None and not (out / "final.npz").exists():
                    time.sleep(2.0)  # the file may land just after the log stream closes
                    if not (out / "final.npz").exists():
                        raise RuntimeError(f"flwr run ended ({run.returncode}) without a result:\n"
                                           f"{_tail(log)}\n--- superlink ---\n"
                                           f"{_tail(fed.logs / 'superlink.log')}")  # fmt: skip
                if time.monotonic() > self._deadline:
                    raise TimeoutError(f"no result after {self._timeout} s; logs in {fed.logs}")
                time.sleep(0.5)
            try:  # the log stream ends with the run (the ServerApp writes its result just before)
                run.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                pass
            return read_flower_outputs(out)
        finally:
            if run.poll() is None:
                stop_processes([run], fed.marker, grace=5.0)
            if run in fed.procs:
                fed.procs.remove(run)
            if run in fed._submitted:
                fed._submitted.remove(run)


def run_localhost(run_config: Mapping[str, object] | None = None, *, num_supernodes: int = 3,
                  timeout: float = 600.0, startup_timeout: float = 120.0, work_dir: str | os.PathLike | None = None,
                  secagg: bool = False, verbose: bool = False) -> FlowerRun:  # fmt: skip
    """Start a SuperLink and ``num_supernodes`` SuperNodes, run the app, stop them all, return the result.

    One :class:`LocalFederation` for one run; to run several experiments on the same
    processes, use :class:`LocalFederation` directly.

    Args:
        run_config: overrides of :data:`~privlab.federated.flower.task.DEFAULT_RUN_CONFIG`
            (``num-clients`` is set to ``num_supernodes``).
        num_supernodes: SuperNodes (one partition each), at least 1.
        timeout: seconds for the whole run after start-up.
        startup_timeout: seconds for the SuperLink and every SuperNode to listen.
        work_dir: where logs, ``FLWR_HOME`` and outputs go (default: a new temp folder, kept).
        secagg: run the SecAgg+ apps (:mod:`~privlab.federated.flower.secaggplus`).
        verbose: echo the ``flwr run`` log stream.

    Returns:
        The :class:`~privlab.federated.flower.task.FlowerRun` read from the outputs.

    Raises:
        TimeoutError: start-up or run exceeded its timeout (all processes are stopped).
        RuntimeError: a process died or the ServerApp wrote no result (log tails attached).

    Used in: chapter 9.
    """
    with LocalFederation(num_supernodes, startup_timeout=startup_timeout, work_dir=work_dir) as federation:
        return federation.run(run_config, timeout=timeout, secagg=secagg, verbose=verbose)


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    import tomllib

    return tomllib.loads("\n".join(pairs)) if pairs else {}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, prog: str = "python -m privlab.federated.flower.localhost") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
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
    if args.secagg and args.dp_noise_multiplier != 0:
        parser.error(f"--secagg adds no DP noise: got --dp-noise-multiplier {args.dp_noise_multiplier}; "
                     "run DP without --secagg")
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
        twin = privlab_twin({**result.history["config"]})
        diff = max(float((twin[k] - result.state[k]).abs().max()) for k in twin)
        print(f"max |privlab FedAvg - Flower| over all parameters: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
