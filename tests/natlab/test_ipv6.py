"""IPv6 rows: global 2001:db8:: addresses behind stateful firewalls (no NAT66), as home routers do.

Peers announce their IPv6 addresses, punch the firewalls over IPv6 and, when IPv4 cannot go
direct (both NATs symmetric), IPv6 still can. IPv6 on one side only changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.natlab.lab import Lab
from tests.natlab.test_matrix import BEACON_IP, DELAY_MS, RUNS, assert_connected, first, record, run_pair, start_beacon
from tests.natlab.test_paths import wait_event

pytestmark = pytest.mark.natlab


def build(lab: Lab, flavour_a: str, flavour_b: str, ipv6: tuple[str, ...]) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", flavour_a)
    lab.add_home("B", flavour_b)
    for router in ipv6:
        lab.enable_ipv6(router)
    lab.set_delay(DELAY_MS)


def test_symmetric_pair_goes_direct_over_ipv6(lab: Lab, tmp_path: Path) -> None:
    build(lab, "symmetric", "symmetric", ("A", "B"))
    entry = start_beacon(lab, tmp_path)[1]
    times = []
    for _ in range(RUNS):
        events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry)
        times.append(assert_connected(events_a, events_b, "direct"))
        assert first(events_a, "connected")["remote"][0] == lab.address6("B1")
        assert first(events_b, "connected")["remote"][0] == lab.address6("A1")
    record("symmetric ↔ symmetric, IPv6 on both", "direct", times)


def test_ipv6_on_one_side_only_is_ipv4_as_before(lab: Lab, tmp_path: Path) -> None:
    build(lab, "symmetric", "symmetric", ("A",))
    entry = start_beacon(lab, tmp_path)[1]
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "relay")]
    record("symmetric ↔ symmetric, IPv6 on one side", "relay", times)


def test_both_families_equal_rtt_prefers_ipv6(lab: Lab, tmp_path: Path) -> None:
    build(lab, "port_restricted", "port_restricted", ("A", "B"))
    entry = start_beacon(lab, tmp_path)[1]
    events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, hold=1.5)
    assert_connected(events_a, events_b, "direct")
    # wherever it was first verified, the pair ends on IPv6 (same RTT on both families here)
    paths = [e for e in events_a if e["event"] == "path"]
    final = paths[-1]["remote"][0] if paths else first(events_a, "connected")["remote"][0]
    assert final == lab.address6("B1"), events_a


def test_direct_over_ipv4_moves_to_ipv6_once_it_opens(lab: Lab, tmp_path: Path) -> None:
    """Router B drops IPv6 until the pair is connected over IPv4: once its IPv6 probes get through
    (same RTT on both families here), the connection moves to IPv6 and the stream goes on."""
    build(lab, "port_restricted", "port_restricted", ("A", "B"))
    entry = start_beacon(lab, tmp_path)[1]
    block = (
        "table inet block6 {\n chain forward {\n"
        "  type filter hook forward priority -50\n  meta nfproto ipv6 meta l4proto udp drop\n }\n}\n"
    )
    lab.run("B", ["nft", "-f", "-"], input=block)

    def during(pa: Any, pb: Any) -> None:
        wait_event(pa, lambda e: e["event"] == "connected", 20, "a connection over IPv4")
        lab.run("B", ["nft", "delete", "table", "inet", "block6"])

    events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, hold=4, during=during)
    assert_connected(events_a, events_b, "direct")
    assert ":" not in first(events_a, "connected")["remote"][0]
    moves = [e for e in events_a if e["event"] == "path"]
    assert moves and moves[-1]["remote"][0] == lab.address6("B1"), events_a
    assert first(events_a, "held")["n"] > 0  # the stream lived through the move


LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 5000)); s.settimeout(float(sys.argv[2]))
if sys.argv[1] != "-":
    s.sendto(b"out", (sys.argv[1], 5000))  # opens the firewall towards that address
try:
    print("got", s.recvfrom(100)[1][0], flush=True)
except socket.timeout:
    print("nothing", flush=True)
"""
SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 5000))
for _ in range(10):
    s.sendto(b"in", (sys.argv[1], 5000)); time.sleep(0.05)
"""


def test_the_ipv6_firewall_drops_unsolicited_packets_and_passes_answers(lab: Lab) -> None:
    build(lab, "port_restricted", "port_restricted", ("A", "B"))
    quiet = lab.python("A1", LISTEN, "-", "1.0")
    lab.python("B1", SEND, lab.address6("A1")).wait(5)
    assert quiet.wait(5) == 0 and quiet.stdout.strip() == "nothing"
    opened = lab.python("A1", LISTEN, lab.address6("B1"), "2.0")
    lab.python("B1", SEND, lab.address6("A1")).wait(5)
    assert opened.wait(5) == 0 and opened.stdout.strip() == f"got {lab.address6('B1')}"
