"""An ssh session through `discretpeer pipe` from a machine whose UDP is blocked.

Everything runs in a network namespace of its own: the beacon, sshd and the exposing peer A on
127.0.0.1; the pipe side B binds its UDP socket to 127.0.0.2, and nftables drops every UDP
packet from and to 127.0.0.2 (a network that blocks UDP). B reaches the beacon over TLS/TCP, the
peers meet through the relay (one UDP leg, one TCP leg), and ssh runs its session over it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.conftest import Beacon, Node, ssh_through_pipe, sshd_argv

# without root there is no network namespace: skipped on a developer machine, a failure under CI
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for a network namespace (run as root)"
)

BLOCK_UDP = """table inet blockudp {
  chain out { type filter hook output priority 0; ip saddr 127.0.0.2 meta l4proto udp drop; }
  chain in { type filter hook input priority 0; ip daddr 127.0.0.2 meta l4proto udp drop; }
}
"""


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = f"dpc-{os.getpid()}-noudp"
    subprocess.run(["ip", "netns", "add", name], check=True)
    prefix = ["ip", "netns", "exec", name]
    base = tmp_path_factory.mktemp("noudp")
    beacon: Beacon | None = None
    sshd: subprocess.Popen | None = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run([*prefix, "nft", "-f", "-"], input=BLOCK_UDP, text=True, check=True)
        beacon = Beacon(base / "beacon", prefix)
        root = base / "ssh"
        root.mkdir()
        port = 2222
        sshd = subprocess.Popen([*prefix, *sshd_argv(root, port)])
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                [*prefix, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True
            ).returncode
            != 0
        ):
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
        yield {"prefix": prefix, "beacon": beacon, "base": base, "ssh_port": port, "key": root / "client"}
    finally:
        if sshd is not None:
            sshd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                sshd.wait(5)
        if beacon is not None:
            beacon.stop()
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_ssh_through_pipe_from_a_network_that_blocks_udp(netns):
    beacon, prefix = netns["beacon"], netns["prefix"]
    a = Node(netns["base"] / "a", [beacon], prefix)
    b = Node(netns["base"] / "b", [beacon], prefix, udp_host="127.0.0.2")
    try:
        # B's UDP really is blocked: its doctor says so, and finds the TLS/TCP path
        report = b.run("doctor", "--no-mdns", "--timeout", "3")
        assert "paths" in report.stdout and "tcp " in report.stdout, report.stdout
        assert "no beacon answered over UDP" in report.stdout, report.stdout
        expose = a.start("expose", str(netns["ssh_port"]), "--allow", b.peer_id, "--json", name="expose")
        expose.wait_event("exposing")
        result = ssh_through_pipe(
            b,
            a,
            netns["ssh_port"],
            netns["key"],
            "echo through-tcp; head -c 300000 /dev/zero | wc -c",
            prefix=prefix,
            timeout=90,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "through-tcp\n300000\n"
        assert "over tcp" in result.stderr  # the status line: the beacon is reached over TCP
        assert "path relay" in result.stderr
        assert "punching is pointless" in result.stderr
    finally:
        a.stop_all()
        b.stop_all()
