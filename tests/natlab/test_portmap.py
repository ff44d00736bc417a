"""Port mapping rows of the matrix: real miniupnpd (PCP, NAT-PMP, UPnP-IGD) on a symmetric router.

Symmetric ↔ symmetric relays without help; with a mapping on one side the other side reaches the
mapped public port and the pair goes direct. A router that refuses mappings leaves the relay.
The mapping is gone from the router once the peer has closed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.natlab.lab import Lab
from tests.natlab.test_matrix import BEACON_IP, DELAY_MS, RUNS, assert_connected, first, record, run_pair, start_beacon

pytestmark = pytest.mark.natlab


def build(lab: Lab, tmp_path: Path, **portmap: Any) -> dict[str, str]:
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "symmetric")
    lab.add_home("B", "symmetric")
    lab.enable_portmap("A", **portmap)
    lab.set_delay(DELAY_MS)
    return start_beacon(lab, tmp_path)[1]


def wait_rules(lab: Lab, router: str, present: bool, timeout: float = 15.0) -> str:
    # returns as soon as the rules are as wanted; the wait starts with the peers' processes, so it
    # covers their start, a gateway that answers late (upnp_delay 2.5 s) and a loaded CI machine
    # (a CI run saw none within 5 s where the mapping was then used)
    deadline = time.monotonic() + timeout
    while True:
        rules = lab.portmap_rules(router)
        if bool(rules) == present or time.monotonic() > deadline:
            return rules
        time.sleep(0.05)


def final_path(events: list[dict]) -> dict:
    """The path a peer ended on: its first connection, or the last move of that connection."""
    return [first(events, "connected"), *(e for e in events if e["event"] == "path")][-1]


@pytest.mark.parametrize(
    "protocols,runs,hold",
    [
        ({"pcp": True, "natpmp": True, "upnp": True}, RUNS, 0),
        ({"pcp": False, "natpmp": True, "upnp": False}, 1, 0),
        # a gateway whose UPnP answers after the pair met and went to the relay (2.5 s late): the
        # beacon passes the new address on, and the relayed connection moves to it
        ({"pcp": False, "natpmp": False, "upnp": True}, 1, 3.0),
    ],
    ids=["all", "natpmp-only", "upnp-only"],
)
def test_symmetric_pair_goes_direct_through_a_mapped_port(
    lab: Lab, tmp_path: Path, protocols: dict, runs: int, hold: float
) -> None:
    entry = build(lab, tmp_path, **protocols)
    wanted = [name for name, on in protocols.items() if on]
    seen_rules: list[str] = []
    times = []
    for _ in range(runs):
        events_a, events_b = run_pair(
            lab,
            tmp_path,
            "A1",
            "B1",
            entry,
            hold=hold,
            a={"upnp_delay": 2.5} if hold else None,
            during=lambda pa, pb: seen_rules.append(wait_rules(lab, "A", True)),
        )
        if hold:
            times.append(assert_connected(events_a, events_b, "relay"))  # met before the mapping
            assert (final_path(events_a)["path"], final_path(events_b)["path"]) == ("direct", "direct"), events_b
        else:
            times.append(assert_connected(events_a, events_b, "direct"))
        done_a = first(events_a, "done")
        mapping = done_a["mapping"]
        assert mapping is not None and mapping["protocol"] in wanted, done_a
        assert mapping["external"][0] == lab.public_address("A1")
        # B reached A at its mapped port: the one path a symmetric NAT leaves open
        assert final_path(events_b)["remote"] == mapping["external"]
        assert seen_rules[-1] and str(mapping["external"][1]) in seen_rules[-1]
        # the peer deleted its mapping when it closed
        assert wait_rules(lab, "A", False) == ""
    late = ", 2.5 s late: relay, then direct" if hold else ""
    record(f"symmetric + port mapping ({'+'.join(wanted)}{late}) ↔ symmetric", "direct", times)


def test_refused_mapping_leaves_the_relay(lab: Lab, tmp_path: Path) -> None:
    """miniupnpd with a deny-all permission rule refuses the UPnP request at once (error 606):
    no mapping, no delay, the relay as without a gateway.

    PCP and NAT-PMP stay off on this router: refused, miniupnpd answers them only after trying
    every other external port, logging each (hundreds of thousands of lines, a core for tens of
    seconds, which starved the rest of the lab); our bounded wait for such a gateway is the
    silent-gateway case of the unit tests, and their refusal is decoded there too."""
    lab.add_public("beacon", BEACON_IP)
    lab.add_home("A", "symmetric")
    lab.add_home("B", "symmetric")
    daemon = lab.enable_portmap("A", pcp=False, natpmp=False, allow=False)
    lab.set_delay(DELAY_MS)
    entry = start_beacon(lab, tmp_path)[1]
    events_a, events_b = run_pair(lab, tmp_path, "A1", "B1", entry)
    times = [assert_connected(events_a, events_b, "relay")]
    done_a = first(events_a, "done")
    assert done_a["mapping"] is None
    assert "606" in done_a["mapping_answers"]["upnp"], done_a  # Action not authorized
    assert "port mapping rejected" in daemon.stderr
    assert lab.portmap_rules("A") == ""
    record("symmetric + mapping refused ↔ symmetric", "relay", times)
