"""What happens on the wire and when paths change: captures at the beacon, NAT rebinding,
relay → direct upgrade with the app's stream intact, a beacon restart during a relayed session."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from discretpeer.tuning import DEFAULT_TUNING
from tests.natlab.lab import Lab
from tests.natlab.test_matrix import first, homes, run_pair, start_beacon


def lab_quic_stack() -> str:
    """What the lab's peers run their peer connections on (as tests/natlab/lab_peer.py picks it)."""
    return os.environ.get("DISCRETPEER_TEST_QUIC_STACK", DEFAULT_TUNING.quic_stack)


pytestmark = pytest.mark.natlab
MARKER = b"PLAINTEXT-MARKER-7f3a"


def wait_event(proc, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in proc.json_lines():
            if predicate(event):
                return event
        if not proc.running():
            break
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s: {proc.json_lines()[-5:]}\n{proc.stderr[-3000:]}")


def test_once_direct_no_peer_data_passes_through_the_beacon(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "port_restricted", "port_restricted")
    _, entry = start_beacon(lab, tmp_path)
    with lab.capture("beacon", bpf="udp") as capture:
        events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, payload=1_000_000)
    assert first(events_a, "connected")["path"] == "direct"
    assert first(events_a, "data")["ok"]
    through_beacon = sum(p.length for p in capture.packets)
    print(f"\n1 MB each way went direct; bytes seen on the beacon's link: {through_beacon}")
    assert through_beacon < 40_000  # beacon control traffic only, no payload
    assert not capture.payload_contains(MARKER)


def test_relayed_payload_is_ciphertext(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "symmetric", "symmetric")
    _, entry = start_beacon(lab, tmp_path)
    with lab.capture("beacon", bpf="udp") as capture:
        events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, payload=300_000)
    assert first(events_a, "connected")["path"] == "relay"
    assert first(events_a, "data")["ok"] and first(events_b, "data")["ok"]
    through_beacon = sum(p.length for p in capture.packets)
    print(f"\n300 kB each way relayed; bytes on the beacon's link: {through_beacon}, marker seen: 0 times")
    assert through_beacon > 2 * 2 * 300_000  # each way in and out of the beacon
    assert not capture.payload_contains(MARKER)


@pytest.mark.parametrize("flavour_b,expected", [("full_cone", "survives"), ("port_restricted", "recovers")])
def test_nat_changes_the_external_port_mid_connection(lab: Lab, tmp_path: Path, flavour_b: str, expected: str) -> None:
    homes(lab, "port_restricted", flavour_b)
    _, entry = start_beacon(lab, tmp_path)

    def during(pa, pb) -> None:
        # on a loaded machine the relay may carry the first echoes and the punch upgrade them a
        # moment later (tests/natlab/test_matrix.py owns how a pair first connects): what this test
        # needs is traffic on the direct path when the mapping changes
        tick = wait_event(
            pa,
            lambda e: e["event"] == "tick" and e["n"] >= 20 and e["path"] == "direct",
            30,
            "traffic on the direct path",
        )
        changed.update(tick)
        # a new ruleset with random ports: every mapping of router A changes (conntrack flushed)
        lab.set_flavour("A", "symmetric")

    changed: dict = {}
    events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, hold=12, during=during, payload=0)
    assert changed["path"] == "direct"
    print(
        f"\nfirst connected via {first(events_a, 'connected')['path']}; the mapping changed after echo {changed['n']}"
    )
    lost = [e for e in events_a if e["event"] == "conn_lost"]
    switches = [e for e in events_b if e["event"] == "path"]
    if lost:
        again = first(events_a, "reconnected")
        print(
            f"\nNAT rebinding, B {flavour_b}: the connection was lost ({lost[0]['error']}) and the app "
            f"recovered by reconnecting in {again['ms']} ms via {again['path']}"
        )
        outcome = "recovers"
    else:
        print(
            f"\nNAT rebinding, B {flavour_b}: the connection survived on one stream; "
            f"B's route followed A's new port: {switches}"
        )
        outcome = "survives"
    held = first(events_a, "held")
    assert held["n"] > 0
    assert outcome == expected


def test_relay_upgrades_to_direct_and_the_stream_survives(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "symmetric", "port_restricted")  # no direct path: relay
    # without the behaviour port nobody knows the mapping: no birthday probing, the pair relays
    _, entry = start_beacon(lab, tmp_path, settings="behaviour_enabled = false")

    def during(pa, pb) -> None:
        wait_event(pa, lambda e: e["event"] == "tick" and e["n"] >= 10, 30, "traffic on the relay")
        lab.set_flavour("B", "full_cone")  # now a direct path exists (symmetric ↔ full cone)

    events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, hold=14, during=during, payload=0)
    assert first(events_a, "connected")["path"] == "relay"
    assert not [e for e in events_a + events_b if e["event"] in ("conn_lost", "failed")]
    upgrade_a = first(events_a, "path")
    upgrade_b = first(events_b, "path")
    assert upgrade_a["path"] == upgrade_b["path"] == "direct"
    held = first(events_a, "held")
    assert held["path"] == "direct" and held["n"] >= 50  # one stream, never interrupted
    print(
        f"\nrelay → direct at t={upgrade_a['t']} s (A) / {upgrade_b['t']} s (B); "
        f"{held['n']} echoes on one stream, none lost"
    )


def test_beacon_restart_during_a_relayed_session(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "symmetric", "symmetric")
    beacon, entry = start_beacon(lab, tmp_path)
    restarted = {}

    def during(pa, pb) -> None:
        wait_event(pa, lambda e: e["event"] == "tick" and e["n"] >= 10, 30, "traffic on the relay")
        beacon.terminate()
        beacon.wait(timeout=10)
        time.sleep(1.0)
        restarted["at"] = time.monotonic()
        start_beacon(lab, tmp_path)  # same directory: same certificate, same hash

    events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, hold=14, during=during, payload=0)
    lost = first(events_a, "conn_lost")
    again = first(events_a, "reconnected")
    held = first(events_a, "held")
    print(
        f"\nbeacon restarted: the app saw '{lost['error']}' at once and reconnected in {again['ms']} ms "
        f"via {again['path']}; then {held['n']} echoes"
    )
    assert again["path"] == "relay" and held["n"] > 0


@pytest.mark.parametrize("link_mtu", [1500, 1400])
def test_datagram_size_follows_the_path_mtu_and_nothing_is_fragmented(lab: Lab, tmp_path: Path, link_mtu: int) -> None:
    """On aioquic, peers probe for larger datagrams once direct: with 1500-byte links everywhere
    both sides end at 1472 (IPv4 Ethernet). With router A's internet link at 1400, probes above
    it die there (its "fragmentation needed" may teach A's kernel the path MTU, then A probes
    exactly that). On qh3 (no probing) both sides send 1350 from the first packet to the last.
    Either way data flows and no IP fragment ever crosses the link."""
    homes(lab, "full_cone", "full_cone")
    if link_mtu != 1500:
        core, router = lab.nodes["core"], lab.nodes["A"]
        subprocess.run(["ip", "-n", core.ns, "link", "set", "c-A", "mtu", str(link_mtu)], check=True)
        subprocess.run(["ip", "-n", router.ns, "link", "set", router.uplink, "mtu", str(link_mtu)], check=True)
    _, entry = start_beacon(lab, tmp_path)
    with lab.capture("A", bpf="udp and (ip[6:2] & 0x3fff != 0)") as fragments:
        events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, payload=2_000_000, hold=2)
    assert first(events_a, "connected")["path"] == "direct"
    data_a, data_b = first(events_a, "data"), first(events_b, "data")
    assert data_a["ok"] and data_b["ok"]
    sizes = (data_a["datagram_size"], data_b["datagram_size"])
    print(
        f"\nlink MTU {link_mtu}: datagram sizes A {sizes[0]}, B {sizes[1]}; "
        f"fragments on A's link: {len(fragments.packets)}"
    )
    assert not fragments.packets
    if lab_quic_stack() == "qh3":
        assert sizes == (1350, 1350)
    elif link_mtu == 1500:
        assert sizes == (1472, 1472)
    else:
        assert all(1350 <= size <= link_mtu - 28 for size in sizes)
