"""The lab's process API: programs in lab hosts, their output, their end; cleanup on errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from .lab import REPO_ROOT, Lab, LabError, _namespaces

pytestmark = pytest.mark.natlab

SERVER = textwrap.dedent(
    """
    import socket, sys
    import discretpeer                      # the repository is importable in every lab host
    print("repo", discretpeer.__file__, flush=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("listening", s.getsockname()[1])  # unbuffered: PYTHONUNBUFFERED=1
    data, addr = s.recvfrom(2048)
    print("got", data.decode(), "from", addr[0], addr[1])
    s.sendto(b"pong", addr)
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    print(s.recvfrom(2048)[0].decode())
    """
)


def test_programs_in_hosts(lab: Lab) -> None:
    lab.add_public("beacon", "203.0.113.10")
    lab.add_home("A", "port_restricted")
    beacon = lab.host("beacon")
    server = beacon.python(SERVER, "4264")
    server.wait_for(r"^listening 4264$", timeout=10)
    assert str(REPO_ROOT) in server.stdout
    client = lab.run("A1", [sys.executable, "-c", CLIENT, beacon.address, "4264"], timeout=10)
    assert client.stdout.strip() == "pong"
    server.wait(timeout=5)
    assert server.returncode == 0
    assert f"got ping from {lab.public_address('A1')}" in server.stdout
    with pytest.raises(LabError):
        lab.run("A1", [sys.executable, "-c", "raise SystemExit(3)"])
    assert lab.run("A1", ["false"], check=False).returncode == 1


def test_close_kills_everything(lab: Lab) -> None:
    lab.add_home("A")
    tracked = lab.popen("A1", ["sh", "-c", "sleep 300 & echo $!; sleep 300"])
    grandchild = int(tracked.wait_for(r"^(\d+)$", timeout=5).group(1))
    assert tracked.running()
    lab.close()
    assert tracked.returncode is not None
    status = Path(f"/proc/{grandchild}/status")
    assert not status.exists() or "zombie" in status.read_text().lower()
    assert not [ns for ns in _namespaces() if ns.startswith(lab._prefix)]


def test_build_error_still_cleans_up(lab: Lab) -> None:
    with pytest.raises(ValueError):
        lab.add_public("bad", "198.51.100.7")  # outside the lab's internet: refused
    with pytest.raises(ValueError):
        lab.add_host("X1", "nowhere")
    with pytest.raises(ValueError):
        lab.add_router("A", "carrier_pigeon")
    prefix = lab._prefix
    assert [ns for ns in _namespaces() if ns.startswith(prefix)]  # core (and the refused 'bad')
    lab.close()
    assert not [ns for ns in _namespaces() if ns.startswith(prefix)]
