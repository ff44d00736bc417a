"""Raw UDP hole punching across the lab's flavours: the lab must match DESIGN.md's facts.

Both peers register with a rendezvous on the beacon host from the socket they punch with; the
rendezvous tells each the other's observed address; both probe at once every 50 ms and answer
whatever address probes come from.
"""

from __future__ import annotations

import sys
import time

import pytest

from .lab import HERE, Lab

pytestmark = [pytest.mark.natlab, pytest.mark.alone]  # times asserted

RENDEZVOUS = ("203.0.113.10", 3478)
WINDOW_S = 1.2  # probes after the introduction; cone<->cone needs about one RTT


def punch(lab: Lab, a: str, b: str, window: float = WINDOW_S, rdv_port: int = RENDEZVOUS[1]) -> tuple[dict, dict]:
    rdv = lab.popen(
        "beacon", [sys.executable, str(HERE / "punch.py"), "rendezvous", str(rdv_port)], name=f"rdv-{a}-{b}"
    )
    rdv.wait_for('"ready"', timeout=10)
    key = f"{a}-{b}-{time.monotonic_ns()}"
    peers = [
        lab.popen(
            h,
            [sys.executable, str(HERE / "punch.py"), "peer", h, key, RENDEZVOUS[0], str(rdv_port), str(window)],
            name=f"punch-{h}",
        )
        for h in (a, b)
    ]
    results = []
    for p in peers:
        p.wait(timeout=10 + window)
        lines = p.json_lines()
        assert lines, f"{p.node} printed nothing: {p.stderr}"
        results.append(lines[-1])
    rdv.kill()
    for r in results:
        assert r["introduced"], f"{r['name']} was never introduced: {rdv.stdout}"
    print(
        f"\n{a} <-> {b}: "
        + "; ".join(
            f"{r['name']} success={r['success']} punch_ms={r['punch_ms']} heard={r['heard_from']}" for r in results
        )
    )
    return results[0], results[1]


@pytest.mark.parametrize(
    ("flavour_a", "flavour_b", "expected"),
    [
        ("port_restricted", "port_restricted", True),
        ("address_restricted", "port_restricted", True),
        ("full_cone", "symmetric", True),
        ("address_restricted", "symmetric", True),
        ("port_restricted", "symmetric", False),
        ("symmetric", "symmetric", False),
        ("udp443_only", "port_restricted", False),
    ],
)
def test_punch_matrix(standard_lab: Lab, flavour_a: str, flavour_b: str, expected: bool) -> None:
    standard_lab.set_flavour("A", flavour_a)
    standard_lab.set_flavour("B", flavour_b)
    # where only UDP to port 443 gets out, the rendezvous listens there (as a beacon would)
    rdv_port = 443 if "udp443_only" in (flavour_a, flavour_b) else RENDEZVOUS[1]
    ra, rb = punch(standard_lab, "A1", "B1", rdv_port=rdv_port)
    assert (ra["success"] and rb["success"]) is expected, (ra, rb)
    if expected and "symmetric" not in (flavour_a, flavour_b):
        assert ra["punch_ms"] < 100 and rb["punch_ms"] < 100, "cone<->cone punches in about one RTT"


def test_punch_with_delay(standard_lab: Lab) -> None:
    """With 20 ms per internet link (A1<->B1 RTT 80 ms), cone<->cone still punches in about one RTT."""
    standard_lab.set_delay(20)
    ra, rb = punch(standard_lab, "A1", "B1", window=2.0)
    assert ra["success"] and rb["success"]
    assert max(ra["punch_ms"], rb["punch_ms"]) < 200


def test_punch_through_cgnat(standard_lab: Lab) -> None:
    """D1 sits behind two NATs (home D, CGNAT C), both endpoint-independent: still cone<->cone."""
    ra, rb = punch(standard_lab, "D1", "B1")
    assert ra["success"] and rb["success"]


@pytest.mark.parametrize(("hairpin", "expected"), [(True, True), (False, False)])
def test_punch_same_nat(standard_lab: Lab, hairpin: bool, expected: bool) -> None:
    """Two hosts behind one router, using only the public addresses the rendezvous saw."""
    standard_lab.set_flavour("A", "port_restricted", hairpin=hairpin)
    ra, rb = punch(standard_lab, "A1", "A2", window=0.8)
    assert (ra["success"] and rb["success"]) is expected
