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
from tests.natlab.test_matrix import BEACON_IP, DELAY_MS, RUNS, assert_connected, record, run_pair

pytestmark = pytest.mark.natlab

BEHAVIOUR_PORT = 4265


def start_beacon_with_behaviour_port(lab: Lab, tmp_path: Path) -> tuple[Any, dict[str, str]]:
    workdir = tmp_path / "beacon-behaviour"
    workdir.mkdir(exist_ok=True)
    config = workdir / "Beacon.conf.toml"
    config.write_text(f"behaviour_port = {BEHAVIOUR_PORT}\n")
    proc = lab.popen(
        "beacon",
        [
            sys.executable,
            "-m",
            "beacon",
            "--dir",
            str(workdir),
            "--config",
            str(config),
            "--host",
            BEACON_IP,
            "--port",
            "4264",
            "--no-ipv6",
        ],
        name="beacon-behaviour",
    )
    proc.wait_for(r"^ready", timeout=20)
    match = re.search(r"certificate hash: (\S+)", proc.stdout)
    assert match, proc.stdout
    return proc, {"hostname": f"{BEACON_IP}:4264", "cert_hash": match.group(1)}


def mappings(lab: Lab, since: int) -> list[str]:
    return [m for p in lab.processes[since:] for m in re.findall(r"nat mapping.*mapping=(\d)", p.stderr)]


def test_symmetric_pair_relays_at_once_with_one_beacon(lab: Lab, tmp_path: Path) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "symmetric")
    lab.add_home("B", "symmetric")
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon_with_behaviour_port(lab, tmp_path)
    since = len(lab.processes)
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "relay") for _ in range(RUNS)]
    assert mappings(lab, since) == ["2"] * (2 * RUNS)  # both learned: endpoint-dependent
    record("symmetric ↔ symmetric, one beacon with a behaviour port", "relay", times)
    assert statistics.median(times) <= 600  # no wait for relay_after (1.5 s)


def test_a_pair_that_can_punch_still_punches(lab: Lab, tmp_path: Path) -> None:
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "symmetric")
    lab.add_home("B", "full_cone")
    lab.set_delay(DELAY_MS)
    _, entry = start_beacon_with_behaviour_port(lab, tmp_path)
    since = len(lab.processes)
    times = [assert_connected(*run_pair(lab, tmp_path, "A1", "B1", entry), "direct")]
    assert sorted(mappings(lab, since)) == ["1", "2"]  # B's cone keeps its port, A's does not
    record("symmetric ↔ full_cone, one beacon with a behaviour port", "direct", times)


def test_doctor_is_a_netcheck_behind_a_symmetric_nat_with_a_gateway(lab: Lab, tmp_path: Path) -> None:
    """One beacon with a behaviour port, a symmetric NAT running miniupnpd: doctor --json names
    the NAT's mapping behaviour, the port mapping protocol and the mapped address, IPv6, timings."""
    import json

    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "symmetric")
    lab.enable_portmap("A", upnp=False)
    _, entry = start_beacon_with_behaviour_port(lab, tmp_path)
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
