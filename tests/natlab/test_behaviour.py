"""NAT behaviour from one beacon: its second UDP port shows each peer whether its NAT maps per
destination, so symmetric ↔ symmetric relays at once with a single beacon, and a pair that can
punch still punches."""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.natlab.lab import Lab
from tests.natlab.test_matrix import BEACON_IP, RUNS, assert_connected, homes, record, run_pair, start_beacon

pytestmark = [pytest.mark.natlab, pytest.mark.alone]  # times asserted


def mappings(lab: Lab, since: int) -> list[str]:
    return [m for p in lab.processes[since:] for m in re.findall(r"nat mapping.*mapping=(\d)", p.stderr)]


def test_symmetric_pair_relays_at_once_with_one_beacon(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "symmetric", "symmetric")
    beacon, entry = start_beacon(lab, tmp_path)  # the default beacon: its behaviour port is 4264 + 1
    assert f"nat behaviour on {BEACON_IP}:4265" in beacon.stdout
    since = len(lab.processes)
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "relay") for _ in range(RUNS)]
    assert mappings(lab, since) == ["2"] * (2 * RUNS)  # both learned: endpoint-dependent
    record("symmetric ↔ symmetric (one beacon: relay at once)", "relay", times)
    assert statistics.median(times) <= 600  # no wait for relay_after (1.5 s)


def test_a_pair_that_can_punch_still_punches(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "symmetric", "full_cone")
    _, entry = start_beacon(lab, tmp_path)
    since = len(lab.processes)
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "direct")]
    assert sorted(mappings(lab, since)) == ["1", "2"]  # B's cone keeps its port, A's does not
    record("symmetric ↔ full_cone (one beacon, mappings known)", "direct", times)


def test_doctor_is_a_netcheck_behind_a_symmetric_nat_with_a_gateway(lab: Lab, tmp_path: Path) -> None:
    """One beacon with a behaviour port, a symmetric NAT running miniupnpd: doctor --json names
    the NAT's mapping behaviour, the port mapping protocol and the mapped address, IPv6, timings."""
    import json

    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "symmetric")
    lab.enable_portmap("A", upnp=False)
    _, entry = start_beacon(lab, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    beacon = f"{entry['hostname']}={entry['cert_hash']}"
    proc = lab.popen(
        "A1",
        [sys.executable, "-m", "discretpeer", "doctor", "--json", "--no-mdns", "--beacon", beacon],
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
    )
    assert proc.wait(30) in (0, 1), proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["nat mapping"]["symmetric"] is True and checks["nat mapping"]["behaviour_ms"] > 0
    assert checks["port mapping"]["protocol"] == "pcp"
    assert checks["port mapping"]["mapped"].startswith(lab.public_address("A1") + ":")
    assert checks["ipv6"]["reachable"] is False
    assert checks["udp"]["verdict"] == "OK"
    assert "Traceback" not in proc.stderr


def run_doctors(lab: Lab, tmp_path: Path, entry: dict[str, str], hosts: list[str]) -> dict[str, dict[str, Any]]:
    """`discretpeer doctor --json` in each host at once; host -> {check name: check}."""
    import json

    beacon = f"{entry['hostname']}={entry['cert_hash']}"
    procs = {}
    for host in hosts:
        home = tmp_path / f"home-{host}"
        home.mkdir()
        procs[host] = lab.popen(
            host,
            [sys.executable, "-m", "discretpeer", "doctor", "--json", "--no-mdns", "--beacon", beacon],
            env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
            name=f"doctor-{host}",
        )
    reports = {}
    for host, proc in procs.items():
        assert proc.wait(30) in (0, 1), proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        reports[host] = {c["check"]: c for c in report["checks"]}
    return reports


def test_doctor_filtering_and_hairpinning_rows(lab: Lab, tmp_path: Path) -> None:
    """One beacon with a behaviour port and three homes, doctor in each at once: a full cone lets
    in the beacon's other port, a port-restricted and a symmetric NAT do not; a probe to our own
    public address comes back through a router that hairpins, not through one that does not."""
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "full_cone", hairpin=True)
    lab.add_home("B", "port_restricted", hairpin=False)
    lab.add_home("C", "symmetric", hairpin=True)
    _, entry = start_beacon(lab, tmp_path)
    reports = run_doctors(lab, tmp_path, entry, ["A1", "B1", "C1"])
    a, b, c = reports["A1"], reports["B1"], reports["C1"]

    assert a["filtering"]["filtering"] == "endpoint-independent" and a["filtering"]["port_dependent"] is False
    assert a["filtering"]["message"].startswith("endpoint-independent (packets from the beacon's other port came in")
    for other in (b, c):
        assert other["filtering"]["filtering"] == "port-dependent" and other["filtering"]["port_dependent"] is True
        assert other["filtering"]["message"].startswith("port-dependent")
    assert a["hairpinning"]["hairpin"] is True and c["hairpinning"]["hairpin"] is True
    assert b["hairpinning"]["hairpin"] is False and b["hairpinning"]["message"].startswith("no:")
    assert lab.public_address("A1") in a["hairpinning"]["message"]
    assert (a["nat mapping"]["symmetric"], b["nat mapping"]["symmetric"], c["nat mapping"]["symmetric"]) == (
        False,
        False,
        True,
    )
    for report in reports.values():
        for name in ("udp", "public address", "nat mapping", "filtering", "hairpinning", "port mapping", "ipv6"):
            assert isinstance(report[name]["ms"], (int, float)) and report[name]["ms"] >= 0, (name, report[name])
        # a check that waited for nothing to come gives up within its bound (three sends, 0.6 s)
        assert report["filtering"]["ms"] < 2000 and report["hairpinning"]["ms"] < 1000
