"""Hard-NAT (birthday) probing: symmetric ↔ port_restricted, which plain punching cannot open,
goes direct. One beacon (its behaviour port is on by default) tells each side its NAT's mapping; the symmetric
side opens 256 extra sockets, the other probes random ports (≤ 1,024 over ≤ 3 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.natlab.lab import Lab
from tests.natlab.test_matrix import RUNS, first, homes, record, run_pair, start_beacon

pytestmark = pytest.mark.natlab


def test_symmetric_to_port_restricted_goes_direct_by_birthday_probing(lab: Lab, tmp_path: Path) -> None:
    homes(lab, "symmetric", "port_restricted")
    _, entry = start_beacon(lab, tmp_path)
    times, direct = [], 0
    runs = max(RUNS, 2)  # probabilistic (29/30 direct in the benchmark): one miss of two is allowed
    for _ in range(runs):
        events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry, hold=5)
        ca = first(events_a, "connected")
        paths = [e["path"] for e in events_a if e["event"] == "path"]
        final = paths[-1] if paths else ca["path"]
        held = first(events_a, "held")  # the stream lived through any move relay → direct
        assert held["n"] > 0
        stats_a, stats_b = first(events_a, "done")["stats"], first(events_b, "done")["stats"]
        assert stats_a["birthday_attempts"] == stats_b["birthday_attempts"] == 1
        assert stats_b["birthday_packets"] <= 1024 and stats_a["birthday_packets"] >= 256
        if final == "direct":
            direct += 1
            assert stats_a["birthday_hits"] == 1
            t = [e["t"] for e in events_a if e["event"] == "path" and e["path"] == "direct"]
            introduced = ca["ms_from_start"] - ca["ms"]  # ms after start when the introduction came
            times.append(1000 * t[0] - introduced if t else ca["ms"])  # introduction → direct
        print(
            f"birthday: final {final}, A {stats_a['birthday_packets']} packets, B {stats_b['birthday_packets']} probes"
        )
    assert direct >= runs - 1, f"{direct}/{runs} direct"
    record("symmetric ↔ port_restricted, birthday probing", "direct", times)
