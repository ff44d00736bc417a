"""UDP socket buffers: a peer asks for RECEIVE_BUFFER and SEND_BUFFER bytes, the beacon for its
own SOCKET_BUFFER each way; where the process may (CAP_NET_ADMIN) it gets them beyond the system's
caps (net.core.rmem_max / wmem_max), else what the caps allow, and says so (a log line;
`discretpeer doctor`'s "udp buffers" check)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from beacon.workers import SOCKET_BUFFER as BEACON_BUFFER
from discretpeer.cli.doctor import OK, WARN, udp_buffer_verdict
from discretpeer.endpoint import BUFFER_FIX, RECEIVE_BUFFER, SEND_BUFFER
from tests.peer.beacon_process import ROOT, beacon_process

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root (a network namespace, CAP_NET_ADMIN)"
)

# a size above this machine's caps (read from a namespace of the test's own: 4 MiB here)
PROBE = """
import json, socket
from discretpeer.endpoint import _make_socket, enlarge_buffers
cap = int(open("/proc/sys/net/core/rmem_max").read())
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    granted = enlarge_buffers(sock, 4 * cap, 2 * cap)
with _make_socket("127.0.0.1", 0) as sock:  # what a peer's endpoint opens
    peer = [sock.getsockopt(socket.SOL_SOCKET, option) // 2 for option in (socket.SO_RCVBUF, socket.SO_SNDBUF)]
print(json.dumps({"cap": cap, "granted": granted, "peer": peer}))
"""


def _in_namespace(prefix: list[str]) -> dict:
    name = f"dpt-{os.getpid()}-buffers"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", name, *prefix, sys.executable, "-c", PROBE],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=30,
        )
        return json.loads(out.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_with_cap_net_admin_the_buffers_go_beyond_the_systems_cap() -> None:
    result = _in_namespace([])
    assert result["granted"] == [4 * result["cap"], 2 * result["cap"]], result
    assert result["peer"] == [RECEIVE_BUFFER, SEND_BUFFER], result


def test_without_it_the_cap_is_what_the_socket_gets_and_what_is_reported() -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing"
    result = _in_namespace([setpriv, "--bounding-set=-net_admin", "--inh-caps=-net_admin"])
    assert result["granted"][0] == result["cap"], result  # receive: rmem_max
    assert 0 < result["granted"][1] <= 4 * result["cap"], result


def test_the_doctors_verdict_names_the_caps_and_the_fix() -> None:
    assert udp_buffer_verdict(RECEIVE_BUFFER, SEND_BUFFER) == (OK, "receive 16.00 MiB, send 4.00 MiB")
    verdict, message = udp_buffer_verdict(212992, 212992)  # a stock system's caps, without privilege
    assert verdict == WARN
    assert "receive 0.20 MiB, send 0.20 MiB of the 16 and 4 MiB asked" in message
    assert "sysctl -w net.core.rmem_max=16777216 net.core.wmem_max=4194304" in message
    assert BUFFER_FIX in message
    assert udp_buffer_verdict(SEND_BUFFER, SEND_BUFFER)[0] == WARN  # the receive side short of its ask
    assert udp_buffer_verdict(0, 0)[0] == OK  # a system that does not tell: nothing to act on


async def test_the_beacon_keeps_its_own_size_each_way(tmp_path) -> None:
    """A beacon's queue delays every peer it serves: it asks SOCKET_BUFFER each way, not a peer's
    receive buffer. Read from the kernel (ss: rb, tb are what the socket may hold, twice the ask)."""
    async with beacon_process(tmp_path, "--no-ipv6") as beacon:
        out = subprocess.run(
            ["ss", "-uamnH", f"sport = :{beacon.port}"], capture_output=True, text=True, check=True
        ).stdout
    held = {name: int(value) for name, value in re.findall(r"\b(rb|tb)(\d+)", out)}
    assert held == {"rb": 2 * BEACON_BUFFER, "tb": 2 * BEACON_BUFFER}, out
    assert BEACON_BUFFER < RECEIVE_BUFFER
