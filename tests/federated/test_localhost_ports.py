"""The localhost federation's port handling, with stand-in servers (no Flower processes; a few seconds).

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
    ports = localhost._free_ports(300)  # one at a time, the OS hands a just-closed port out again now and then
    assert len(set(ports)) == 300 and all(0 < p < 65536 for p in ports)


def _listening_socket():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.fixture
def taken():
    """A port on which something else listens."""
    s = _listening_socket()
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
        with pytest.warns(RuntimeWarning, match=f"port {taken} was taken"):
            port = fed._start_listening(lambda p: fed._spawn([sys.executable, "-c", SERVER, str(p)], log), log,
                                        time.monotonic() + 60)
        assert port != taken and handed[0] == [taken]
        assert len(fed.procs) == 1 and fed.procs[0].poll() is None  # the dead first attempt is not a server
        assert "address already in use" in (fed.logs / "server.attempt1.log").read_text()  # its log is kept
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        fed.close()


def test_a_port_taken_every_time_is_an_error_naming_the_ports(tmp_path, monkeypatch):
    held = [_listening_socket() for _ in range(PORT_ATTEMPTS)]
    ports = [s.getsockname()[1] for s in held]
    queue = list(ports)
    monkeypatch.setattr(localhost, "_free_ports", lambda n: [queue.pop(0)])
    fed = LocalFederation(1, work_dir=tmp_path)
    fed.logs.mkdir(parents=True)
    log = fed.logs / "server.log"
    try:
        with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="address already in use") as err:
            fed._start_listening(lambda p: fed._spawn([sys.executable, "-c", SERVER, str(p)], log), log,
                                 time.monotonic() + 60)
        assert str(ports) in str(err.value) and fed.procs == [] and len(fed._failed) == PORT_ATTEMPTS
    finally:
        fed.close()
        for s in held:
            s.close()


#: Stand-ins for flower-superlink and flower-supernode: they take --port like Flower's and listen there.
FAKE_FLOWER = """#!{python}
import sys
sys.argv = [sys.argv[0], sys.argv[sys.argv.index("--port") + 1]]
exec({server!r})
"""


def test_start_gives_a_supernode_that_lost_its_port_a_fresh_one_and_keeps_its_partition(tmp_path, monkeypatch, taken):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("flower-superlink", "flower-supernode"):
        script = bin_dir / name
        script.write_text(FAKE_FLOWER.format(python=sys.executable, server=SERVER))
        script.chmod(0o755)
    real = localhost._free_ports
    monkeypatch.setattr(localhost, "_free_ports",
                        lambda n: [taken if k == 1 and n == 3 else p for k, p in enumerate(real(n))])
    fed = LocalFederation(3, work_dir=tmp_path / "fed")
    fed._bin = str(bin_dir)
    started = []
    try:
        with pytest.warns(RuntimeWarning, match=f"port {taken} was taken"):
            fed.start()
        assert len(fed.procs) == 4 and all(p.poll() is None for p in fed.procs)
        link_port = fed.procs[0].args[fed.procs[0].args.index("--port") + 1]
        assert f'address = "127.0.0.1:{link_port}"' in (fed.home / "config.toml").read_text()
        nodes = {p.args[-1]: int(p.args[p.args.index("--port") + 1]) for p in fed.procs[1:]}
        assert sorted(nodes) == [f"partition-id={k} num-partitions=3" for k in range(3)]  # node 1 kept its id
        assert nodes["partition-id=1 num-partitions=3"] != taken and len(set(nodes.values())) == 3
        assert (fed.logs / "supernode-1.attempt1.log").exists()
        started = fed.procs + fed._failed
        assert len(fed._failed) == 1
    finally:
        fed.close()
    assert started and all(p.poll() is not None for p in started)  # close() stopped all, the failed one too
