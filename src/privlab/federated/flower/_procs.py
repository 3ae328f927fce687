"""Process-tree cleanup for the Flower launchers (Linux ``/proc``; elsewhere only process groups).

Used in: chapter 9 (through :mod:`privlab.federated.flower.localhost` and
:func:`privlab.federated.flower.simulation.run_flower_simulation`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["stop_processes"]


def _descendants(pids: list[int]) -> set[int]:
    """Every live process below ``pids`` in the process tree (SuperExec, flwr-serverapp, flwr-clientapp...)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _signal(pid: int, sig: int, *, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ours(pid: int, marker: bytes) -> bool:
    """Still the process we mean (not a recycled pid): its environment carries our private FLWR_HOME."""
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def stop_processes(procs: list[subprocess.Popen], marker: bytes, grace: float = 10.0) -> None:
    """Stop every process we started and everything they started: SIGTERM, then SIGKILL after ``grace`` s.

    ``procs`` were started with ``start_new_session=True``; their process groups are
    signalled. SuperLink and SuperNode detach their SuperExec into a new session, and
    Ray's driver starts its own servers, so the tree is walked too (``/proc``, while
    the parent links still exist); a descendant is signalled only while its
    environment still carries ``marker`` (an environment entry unique to this run),
    so a recycled pid is never hit.
    """
    tree = _descendants([p.pid for p in procs])
    for p in reversed(procs):
        if p.poll() is None:
            _signal(p.pid, signal.SIGTERM, group=True)
    for pid in tree:
        if _ours(pid, marker):
            _signal(pid, signal.SIGTERM, group=False)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    while tree and time.monotonic() < deadline:
        tree = {pid for pid in tree if _ours(pid, marker)}
        time.sleep(0.1)
    tree |= _descendants([p.pid for p in procs])
    for p in procs:  # a group may outlive its leader: kill it regardless
        _signal(p.pid, signal.SIGKILL, group=True)
        p.wait()
    for pid in tree:
        if _ours(pid, marker):
            _signal(pid, signal.SIGKILL, group=False)
