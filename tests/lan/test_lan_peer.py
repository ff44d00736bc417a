"""Peers on one LAN meet with no beacon at all: mDNS sighting → punch → verified connection."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from discretpeer import Identity
from tests.lan.lan_lab import Lab, netns_unavailable, skip_or_fail

PEER_SCRIPT = Path(__file__).resolve().with_name("lan_peer.py")
pytestmark = pytest.mark.mdns


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = netns_unavailable()
    if reason:
        skip_or_fail(reason)
    lab = Lab("p", ["a", "b", "c"])
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()


def start_peer(lab: Lab, host: str, identity_path: Path, **config):
    config["identity"] = str(identity_path)
    return lab.spawn(host, [sys.executable, "-u", str(PEER_SCRIPT), json.dumps(config)])


def test_two_peers_meet_on_the_lan_with_no_beacon_and_a_third_is_ignored(lab: Lab, tmp_path: Path) -> None:
    identities = {}
    for name in "abc":
        identities[name] = Identity.generate()
        identities[name].save(tmp_path / f"{name}.key")
    try:
        a = start_peer(lab, "a", tmp_path / "a.key", meeting="lan meeting", expect=identities["b"].peer_id, role="dial")
        b = start_peer(
            lab, "b", tmp_path / "b.key", meeting="lan meeting", expect=identities["a"].peer_id, role="serve"
        )
        # c waits on another meeting on the same LAN: it must never be contacted
        c = start_peer(
            lab,
            "c",
            tmp_path / "c.key",
            meeting="another meeting",
            expect=identities["a"].peer_id,
            role="serve",
            timeout=4,
        )
        connected_a = a.wait_for(lambda e: e.get("event") in ("connected", "failed"), 20, "connected")
        connected_b = b.wait_for(lambda e: e.get("event") in ("connected", "failed"), 20, "connected")
        assert connected_a["event"] == connected_b["event"] == "connected", (connected_a, connected_b)
        assert connected_a["peer_id"] == identities["b"].peer_id and connected_b["peer_id"] == identities["a"].peer_id
        assert connected_a["path"] == connected_b["path"] == "lan"
        assert connected_a["remote"][0] == lab.ipv4("b")
        reply = a.wait_for(lambda e: e.get("event") == "reply", 10, "reply")
        assert reply["data"] == "hello over the lan"[::-1]
        print(
            f"\nLAN, no beacon: start -> verified connection {connected_a['ms_from_start']} ms "
            f"(sighting -> verified {connected_a['ms_from_sighting']} ms)"
        )
        failed_c = c.wait_for(lambda e: e.get("event") in ("connected", "failed"), 15, "c's result")
        assert failed_c["event"] == "failed" and "no beacon configured" not in failed_c["error"]
        assert failed_c["lan_sightings"] == 0
    finally:
        lab.stop_all()
