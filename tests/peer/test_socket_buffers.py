"""UDP socket buffers: a peer asks for RECEIVE_BUFFER and SEND_BUFFER bytes, the beacon for its
own SOCKET_BUFFER each way; where the process may (CAP_NET_ADMIN) it gets them beyond the system's
caps (net.core.rmem_max / wmem_max), else what the caps allow, and says so (a log line;
`discretpeer doctor`'s "udp buffers" check)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from beacon.workers import SOCKET_BUFFER as BEACON_BUFFER
from discretpeer import Identity
from discretpeer.cli.doctor import OK, WARN, udp_buffer_verdict
from discretpeer.endpoint import BUFFER_FIX, RECEIVE_BUFFER, SEND_BUFFER
from tests.peer.beacon_process import ROOT, BeaconProcess, beacon_process
from tests.support.peers import carried, connect_both, loopback_peer

# only these need root: the doctor's wording and the flood run anywhere
needs_root = pytest.mark.skipif(
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


@needs_root
def test_with_cap_net_admin_the_buffers_go_beyond_the_systems_cap() -> None:
    result = _in_namespace([])
    assert result["granted"] == [4 * result["cap"], 2 * result["cap"]], result
    assert result["peer"] == [RECEIVE_BUFFER, SEND_BUFFER], result


@needs_root
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


@needs_root
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


# a stranger's flood from its own address: bursts of garbage datagrams as fast as loopback takes
# them (UDP_SEGMENT: 50 datagrams a syscall), a pause between bursts
FLOOD = """
import os, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.9", 0))
junk = os.urandom(1200 * 50)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    burst = time.monotonic() + 0.2
    while time.monotonic() < burst:
        try:
            sock.sendmsg([junk], [(socket.SOL_UDP, 103, (1200).to_bytes(2, "little"))], 0, ("127.0.0.1", port))
            sent += 50
        except OSError:
            pass  # a full send buffer: go on
    time.sleep(0.2)
print(sent)
"""


def _socket_memory(port: int) -> dict[str, int]:
    """The beacon socket's kernel memory (ss): r queued, rb its limit, d datagrams dropped."""
    out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in re.findall(r"\b(r|rb|d)(\d+)", out)}


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]  # Linux always has it


async def test_a_strangers_flood_stops_at_the_beacons_buffer_and_a_pair_still_meets(tmp_path) -> None:
    """What the beacon's buffer size means to a stranger: a flood of garbage at its port queues
    at most that buffer (the kernel drops the rest), the beacon's memory stays flat, it logs no
    traceback, and a pair meets through it and carries data meanwhile."""
    beacon = BeaconProcess(tmp_path, "--no-ipv6")
    await beacon.start()
    assert beacon.process is not None and beacon.process.stderr is not None
    flood = None
    try:
        rss_before = _rss_kb(beacon.process.pid)
        drops_before = _socket_memory(beacon.port)["d"]
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOOD, str(beacon.port), "6", stdout=asyncio.subprocess.PIPE
        )
        samples: list[dict[str, int]] = []

        async def watch() -> None:
            while True:
                samples.append(_socket_memory(beacon.port))
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.sleep(0.5)  # the flood is on before the pair starts
            ia, ib = Identity.generate(), Identity.generate()
            async with loopback_peer(ia, [beacon.entry]) as pa, loopback_peer(ib, [beacon.entry]) as pb:
                ca, cb = await asyncio.wait_for(connect_both(pa, pb, "flooded meeting", timeout=20), 30)
                payload = os.urandom(200_000)
                assert await asyncio.wait_for(carried(ca, cb, payload), 20) == payload
        finally:
            watcher.cancel()
        sent = int((await asyncio.wait_for(flood.communicate(), 30))[0])
        rss_after = _rss_kb(beacon.process.pid)
        assert beacon.process.returncode is None  # still serving
    finally:
        if flood is not None and flood.returncode is None:
            flood.kill()
            await flood.wait()
        await beacon.stop()
    stderr = (await beacon.process.stderr.read()).decode(errors="replace")
    dropped = samples[-1]["d"] - drops_before
    queued = max(sample["r"] for sample in samples)
    print(
        f"\nflood: {sent:,} datagrams sent, {dropped:,} dropped by the kernel, queued at most {queued:,} bytes; "
        f"beacon RSS +{rss_after - rss_before:,} KB"
    )
    assert dropped > 0, "the flood never filled the beacon's buffer: it tested nothing"
    assert all(sample["rb"] <= 2 * BEACON_BUFFER for sample in samples)
    assert queued <= 2 * BEACON_BUFFER + 65536  # the kernel lets one datagram past the limit
    assert rss_after - rss_before < 20_000, (rss_before, rss_after)  # KB
    assert "Traceback" not in stderr, stderr[-3000:]
