"""The traversal matrix: real beacon + real peers (public API) through real Linux NATs.

Every case runs the beacon and two peers as separate processes in lab hosts, with 20 ms of delay
on each internet link (peer↔peer RTT 80 ms), asserts the path kind, that both identities were
verified, that data flowed both ways, and records the time from introduction to verified
connection; the table (p50 over the runs) is printed at the end of the test session.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from discretpeer import Identity
from tests.natlab.lab import Lab

pytestmark = pytest.mark.natlab

PEER = str(Path(__file__).with_name("lab_peer.py"))
BEACON_IP = "203.0.113.10"
BEACON2_IP = "203.0.113.11"
DELAY_MS = 20.0  # per internet link, one way
RUNS = int(os.environ.get("DPN_MATRIX_RUNS", "1"))  # figures: the natlab benchmark (more runs)

# case name -> list of introduction→verified times (ms); printed by conftest's terminal summary
RESULTS: dict[str, dict[str, Any]] = {}


def start_beacon(
    lab: Lab, tmp_path: Path, port: int = 4264, *, node: str = "beacon", ip: str = BEACON_IP, settings: str = ""
) -> tuple[Any, dict[str, str]]:
    workdir = tmp_path / f"{node}-{port}"
    workdir.mkdir(exist_ok=True)
    if settings:  # e.g. "tcp_extra_ports = [443]" (the rest stays at its default)
        (workdir / "Beacon.conf.toml").write_text(settings + "\n")
    proc = lab.popen(
        node,
        [sys.executable, "-m", "beacon", "--dir", str(workdir), "--host", ip, "--port", str(port), "--no-ipv6"],
        name=f"{node}-{port}",
    )
    proc.wait_for(r"^ready", timeout=20)
    match = re.search(r"certificate hash: (\S+)", proc.stdout)
    assert match, proc.stdout
    return proc, {"hostname": f"{ip}:{port}", "cert_hash": match.group(1)}


def run_pair(
    lab: Lab,
    tmp_path: Path,
    host_a: str,
    host_b: str,
    entry: dict[str, str],
    *,
    a: dict[str, Any] | None = None,
    b: dict[str, Any] | None = None,
    timeout: float = 20,
    payload: int = 100_000,
    hold: float = 0,
    during: Any = None,
) -> tuple[list[dict], list[dict]]:
    """Run one meeting between a peer on host_a (dialing data) and one on host_b (echoing)."""
    ids = {name: Identity.generate() for name in ("a", "b")}
    stamp = f"{time.monotonic_ns()}"
    for name, identity in ids.items():
        identity.save(tmp_path / f"{name}-{stamp}.key")
    common = {
        "beacons": [entry],
        "meeting": f"lab meeting {stamp}",
        "timeout": timeout,
        "payload": payload,
        "hold": hold,
        "marker": "PLAINTEXT-MARKER-7f3a",
    }
    config_a = common | {"identity": str(tmp_path / f"a-{stamp}.key"), "expect": ids["b"].peer_id, "role": "dial"}
    config_b = common | {"identity": str(tmp_path / f"b-{stamp}.key"), "expect": ids["a"].peer_id, "role": "serve"}
    config_a.update(a or {})
    config_b.update(b or {})
    import json

    pa = lab.popen(host_a, [sys.executable, PEER, json.dumps(config_a)], name=f"peer-a-{stamp}")
    pb = lab.popen(host_b, [sys.executable, PEER, json.dumps(config_b)], name=f"peer-b-{stamp}")
    if during is not None:
        during(pa, pb)
    deadline = timeout + hold + 40
    for proc in (pa, pb):
        proc.wait(timeout=deadline)
    events_a, events_b = pa.json_lines(), pb.json_lines()
    for events, ident, other in ((events_a, "a", ids["b"]), (events_b, "b", ids["a"])):
        connected = [e for e in events if e["event"] == "connected"]
        if connected:
            assert connected[0]["peer_id"] == other.peer_id, f"{ident} verified the wrong peer"
    return events_a, events_b


def first(events: list[dict], kind: str) -> dict:
    found = [e for e in events if e["event"] == kind]
    assert found, f"no {kind!r} event in {events}"
    return found[0]


def assert_connected(events_a: list[dict], events_b: list[dict], path: str) -> float:
    """Both verified each other on ``path`` and data went both ways; returns intro→verified ms."""
    for events in (events_a, events_b):
        failed = [e for e in events if e["event"] == "failed"]
        assert not failed, failed
    ca, cb = first(events_a, "connected"), first(events_b, "connected")
    assert (ca["path"], cb["path"]) == (path, path), (ca, cb)
    assert ca["dialer"] != cb["dialer"]
    for events in (events_a, events_b):
        data = first(events, "data")
        assert data["ok"] and data["bytes"] > 0, data
    return max(x["ms"] for x in (ca, cb) if x["ms"] is not None)


def record(case: str, path: str, times: list[float]) -> None:
    rtt = 4 * DELAY_MS
    entry = RESULTS.setdefault(case, {"path": path, "times": []})
    entry["times"].extend(times)
    p50 = statistics.median(entry["times"])
    print(
        f"\n{case}: {path}, introduction→verified p50 {p50:.0f} ms = {p50 / rtt:.1f} RTT "
        f"(runs: {', '.join(f'{t:.0f}' for t in times)} ms)"
    )


def homes(lab: Lab, flavour_a: str, flavour_b: str) -> None:
    """The beacon's public host, homes A (host A1) and B (B1) behind NATs of these flavours, DELAY_MS per link."""
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", flavour_a)
    lab.add_home("B", flavour_b)
    lab.set_delay(DELAY_MS)


def matrix_case(
    lab: Lab, tmp_path: Path, case: str, flavour_a: str, flavour_b: str, path: str, settings: str = "", **kwargs: Any
) -> list[float]:
    homes(lab, flavour_a, flavour_b)
    _, entry = start_beacon(lab, tmp_path, settings=settings)
    times = []
    for _ in range(RUNS):
        events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, **kwargs)
        times.append(assert_connected(events_a, events_b, path))
    record(case, path, times)
    return times


@pytest.mark.parametrize(
    "flavour_a,flavour_b",
    [
        ("port_restricted", "port_restricted"),
        ("address_restricted", "full_cone"),
        ("symmetric", "full_cone"),
        ("symmetric", "address_restricted"),
    ],
)
def test_direct_through_nats(lab: Lab, tmp_path: Path, flavour_a: str, flavour_b: str) -> None:
    matrix_case(lab, tmp_path, f"{flavour_a} ↔ {flavour_b}", flavour_a, flavour_b, "direct")


def test_a_beacon_without_behaviour_port_relays_symmetric_to_port_restricted(lab: Lab, tmp_path: Path) -> None:
    """A beacon with behaviour_enabled = false (or an older one): nobody knows the symmetric
    side's mapping, so no birthday probing; plain punching fails and the pair relays."""
    # (symmetric ↔ symmetric relays at once: tests/natlab/test_behaviour.py; symmetric ↔
    # port_restricted with the default beacon goes direct by birthday probing: test_birthday.py)
    case = "symmetric ↔ port_restricted, beacon without behaviour port"
    matrix_case(lab, tmp_path, case, "symmetric", "port_restricted", "relay", settings="behaviour_enabled = false")


@pytest.mark.alone  # times asserted
def test_two_beacons_show_both_nats_map_per_destination_so_relay_at_once(lab: Lab, tmp_path: Path) -> None:
    """With two beacons at different addresses each peer sees its own NAT's mapping (Welcome) and
    the other's (its address in each introduction): symmetric on both sides means punching cannot
    meet, so both ask for the relay at once instead of after relay_after (1.5 s). Two beacons
    grant a session each; whichever each peer picked, frames of both are accepted."""
    lab.add_public("beacon", BEACON_IP)
    lab.add_public("beacon2", BEACON2_IP)
    lab.add_home("A", "symmetric")
    lab.add_home("B", "symmetric")
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon(lab, tmp_path)
    _, entry2 = start_beacon(lab, tmp_path, node="beacon2", ip=BEACON2_IP)
    both = {"beacons": [entry, entry2]}
    times = [
        assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry, a=both, b=both), "relay") for _ in range(RUNS)
    ]
    record("symmetric ↔ symmetric, two beacons", "relay", times)
    assert statistics.median(times) < 1500  # the relay did not wait for relay_after


def test_same_router_without_hairpin_uses_local_addresses(lab: Lab, tmp_path: Path) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "port_restricted", hosts=["A1", "A2"], hairpin=False)
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon(lab, tmp_path)
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "A2", entry), "lan") for _ in range(RUNS)]
    record("same router, no hairpin", "lan", times)


def test_same_router_with_hairpin(lab: Lab, tmp_path: Path) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "port_restricted", hosts=["A1", "A2"], hairpin=True)
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon(lab, tmp_path)
    # no local candidates: the only way is the router's public address, i.e. the hairpin
    quiet = {"report_local": False}
    times = [
        assert_connected(*run_pair(lab, tmp_path, "A1", "A2", entry, a=quiet, b=quiet), "direct") for _ in range(RUNS)
    ]
    record("same router, hairpin", "direct", times)


def test_behind_cgnat_and_home_router(lab: Lab, tmp_path: Path) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_cgnat("C", "port_restricted")
    lab.add_home("D", "port_restricted", parent="C")
    lab.add_home("B", "port_restricted")
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon(lab, tmp_path)
    times = [assert_connected(*run_pair(lab, tmp_path, "D1", "B1", entry), "direct") for _ in range(RUNS)]
    record("CGNAT + home router ↔ port_restricted", "direct", times)


def test_two_homes_behind_the_same_cgnat(lab: Lab, tmp_path: Path) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_cgnat("C", "port_restricted", hairpin=True)
    lab.add_home("D", "port_restricted", parent="C")
    lab.add_home("E", "port_restricted", parent="C")
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon(lab, tmp_path)
    times = []
    for _ in range(RUNS):
        events_d, events_e = run_pair(lab, tmp_path, "D1", "E1", entry)
        times.append(assert_connected(events_d, events_e, "direct"))
        # the path is the CGNAT's public address, hairpinned: not a local address
        assert first(events_d, "connected")["remote"][0] == lab.public_address("E1")
    record("two homes behind one CGNAT", "direct", times)


def test_udp_only_to_443_with_the_beacon_on_443(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "udp443_only", "full_cone")
    _, entry = start_beacon(lab, tmp_path, port=443)
    # the cone side listens on 443 too (its NAT keeps the port): a strict firewall can reach it
    times = [
        assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry, b={"port": 443}), "direct") for _ in range(RUNS)
    ]
    record("UDP only to 443 ↔ full_cone on 443", "direct", times)
    # a cone peer on any other port cannot be reached directly: the beacon on 443 relays
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "relay") for _ in range(RUNS)]
    record("UDP only to 443 ↔ full_cone (other port)", "relay", times)


# --- networks that block UDP (issue 14): the beacon over TLS/TCP, relay across UDP/TCP legs ---


def _tls_only(capture: Any, peer_ip: str) -> None:
    """Everything between the beacon and ``peer_ip`` was TCP, and no plaintext marker in it."""
    packets = [p for p in capture.packets if peer_ip in (p.src, p.dst)]
    assert packets, "nothing captured"
    assert {p.proto for p in packets} == {"tcp"}, sorted({p.proto for p in packets})
    assert not capture.payload_contains(b"PLAINTEXT-MARKER-7f3a")
    # each connection's first bytes each way are TLS handshake records (ClientHello, ServerHello)
    first: dict[tuple, bytes] = {}
    for p in packets:
        if p.payload:
            first.setdefault((p.src, p.sport, p.dst, p.dport), p.payload)
    assert first and all(payload[:2] == b"\x16\x03" for payload in first.values()), first


def test_udp_blocked_relays_over_one_tcp_and_one_udp_leg(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "udp_blocked", "port_restricted")
    _, entry = start_beacon(lab, tmp_path)
    times = []
    with lab.capture("beacon") as capture:
        for _ in range(RUNS):
            times.append(assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "relay"))
    _tls_only(capture, lab.public_address("A1"))
    udp_b = [p for p in capture.packets if lab.public_address("B1") in (p.src, p.dst) and p.proto == "udp"]
    assert udp_b, "B's leg is UDP"
    record("udp_blocked ↔ port_restricted (TCP + UDP legs)", "relay", times)


def test_udp_blocked_on_both_sides_relays_over_two_tcp_legs(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "udp_blocked", "udp_blocked")
    _, entry = start_beacon(lab, tmp_path)
    with lab.capture("beacon") as capture:
        times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "relay") for _ in range(RUNS)]
    _tls_only(capture, lab.public_address("A1"))
    _tls_only(capture, lab.public_address("B1"))
    record("udp_blocked ↔ udp_blocked (TCP legs)", "relay", times)


def test_proxy_only_network_reaches_the_beacon_through_tinyproxy(lab: Lab, tmp_path: Path) -> None:
    """A's network forwards nothing (no UDP, no TCP); a real tinyproxy on its router tunnels
    CONNECT to port 443 only: the beacon's extra TLS port."""
    homes(lab, "proxy_only", "port_restricted")
    proxy = lab.start_proxy("A", connect_ports=(443,))
    _, entry = start_beacon(lab, tmp_path, settings="tcp_extra_ports = [443]")
    entry443 = {**entry, "tcp_port": 443}
    with lab.capture("beacon") as capture:
        times = [
            assert_connected(
                *run_pair(lab, tmp_path, "A1", "B1", entry, a={"proxy": proxy, "beacons": [entry443]}), "relay"
            )
            for _ in range(RUNS)
        ]
    packets = [p for p in capture.packets if lab.public_address("A1") in (p.src, p.dst)]
    assert packets and {(p.proto, p.sport if p.src == BEACON_IP else p.dport) for p in packets} == {("tcp", 443)}
    assert not capture.payload_contains(b"PLAINTEXT-MARKER-7f3a")
    record("proxy-only (tinyproxy, 443) ↔ port_restricted", "relay", times)


def test_udp443_only_uses_the_beacons_tcp_443(lab: Lab, tmp_path: Path) -> None:
    """Beacon on UDP 4264 (out of reach) with TLS on TCP 443 too: the strict network's peer
    registers over TCP 443 and meets a full-cone peer on another port through the relay."""
    homes(lab, "udp443_only", "full_cone")
    _, entry = start_beacon(lab, tmp_path, settings="tcp_extra_ports = [443]")
    entry443 = {**entry, "tcp_port": 443}
    times = [
        assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry, a={"beacons": [entry443]}), "relay")
        for _ in range(RUNS)
    ]
    record("udp443_only ↔ full_cone (other port), beacon TCP 443", "relay", times)
