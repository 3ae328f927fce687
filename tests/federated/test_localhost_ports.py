"""The localhost federation's port handling, with a stand-in server (no Flower processes, about a second).

A SuperNode that lost its port to another process between the port's choice and its bind used to
end the whole run ("address already in use"; seen when chapter 9 and the Flower tests started
federations at the same moment under pytest-xdist). Now every server is waited for and started
again on a fresh port when that happens.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from privlab.federated.flower import localhost
from privlab.federated.flower.localhost import PORT_ATTEMPTS, LocalFederation

#: Listens on argv[1] for a minute, or exits 1 with uvicorn's words when the port is taken.
SERVER = """
import socket, sys, time
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as err:
    print(f"ERROR:    [Errno {err.errno}] error while attempting to bind: address already in use")
    sys.exit(1)
s.listen()
time.sleep(60)
"""


def test_free_ports_are_distinct():
    ports = localhost._free_ports(20)
    assert len(set(ports)) == 20 and all(0 < p < 65536 for p in ports)


@pytest.fixture
def taken():
    """A port on which something else listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_server_whose_port_was_taken_starts_again_on_a_fresh_one(tmp_path, monkeypatch, taken):
    real = localhost._free_ports
    handed = []

    def first_taken(n):  # the first port handed out is already in use, as when another process won the race
        ports = [taken] if not handed else real(n)
        handed.append(ports)
        return ports

    monkeypatch.setattr(localhost, "_free_ports", first_taken)
    fed = LocalFederation(1, work_dir=tmp_path)
    fed.logs.mkdir(parents=True)
    log = fed.logs / "server.log"
    try:
        port = fed._start_listening(lambda p: fed._spawn([sys.executable, "-c", SERVER, str(p)], log), log,
                                    time.monotonic() + 60)
        assert port != taken and handed[0] == [taken]
        assert len(fed.procs) == 1 and fed.procs[0].poll() is None  # the dead first attempt is forgotten
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        fed.close()


def test_a_port_taken_every_time_is_an_error_naming_it(tmp_path, monkeypatch, taken):
    monkeypatch.setattr(localhost, "_free_ports", lambda n: [taken])
    fed = LocalFederation(1, work_dir=tmp_path)
    fed.logs.mkdir(parents=True)
    log = fed.logs / "server.log"
    spawned = []

    def spawn(p):
        spawned.append(p)
        return fed._spawn([sys.executable, "-c", SERVER, str(p)], log)

    try:
        with pytest.raises(RuntimeError, match="address already in use"):
            fed._start_listening(spawn, log, time.monotonic() + 60)
        assert spawned == [taken] * PORT_ATTEMPTS and fed.procs == []
    finally:
        fed.close()
