"""LAN discovery over real mDNS between network namespaces on one bridge, and with avahi.

Hosts a, b, c, d are namespaces dpl-a.. on a bridge in dpl-sw (10.77.0.1..4). Each peer is a real
process (tests/lan/lan_node.py) running LanDiscovery; avahi-daemon is an independent mDNS stack.
Skipped with the reason where namespaces cannot be created, failed instead when CI is set.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lan_lab import PYTHON, Lab, netns_unavailable, skip_or_fail

pytestmark = pytest.mark.mdns

FLOOD = Path(__file__).resolve().with_name("lan_flood.py")
DISCOVERY_TIMEOUT = 10.0


def b64(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


def ready(node: Any) -> dict[str, Any]:
    return node.wait_for(lambda e: e.get("ev") == "ready", 15, "ready")


def found_from(
    node: Any, instance: str, timeout: float = DISCOVERY_TIMEOUT, token: str | None = None
) -> dict[str, Any]:
    return node.wait_for(
        lambda e: e.get("ev") == "found" and e["instance"] == instance and (token is None or e["token"] == token),
        timeout,
        f"discovery of {instance[:8]}",
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = netns_unavailable()
    if reason:
        skip_or_fail(reason)
    lab = Lab("", ["a", "b", "c", "d"])
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The module's lab, with every process started by the test stopped afterwards."""
    try:
        yield lab
    finally:
        lab.stop_all()


def test_two_peers_find_each_other_and_ignore_a_third(net: Lab) -> None:
    token, other = os.urandom(32), os.urandom(32)
    spawned = time.monotonic()
    a = net.node("a", tokens=[token.hex()])  # all interfaces, v4 + v6
    b = net.node("b", tokens=[token.hex()], interfaces=["eth0"], ip_version="v4")
    c = net.node("c", tokens=[other.hex()])
    ra, rb, rc = ready(a), ready(b), ready(c)
    assert "10.77.0.1" in ra["published"] and "127.0.0.1" not in ra["published"]

    fa = found_from(a, rb["instance"])
    fb = found_from(b, ra["instance"])
    wall = time.monotonic() - spawned
    assert fa["token"] == fb["token"] == token.hex()
    assert fa["addresses"] == [["10.77.0.2", rb["port"]]]
    assert fb["addresses"] == [["10.77.0.1", ra["port"]]]
    print(
        f"\nLAN discovery: a found b {fa['t'] * 1000:.0f} ms after start(), b found a {fb['t'] * 1000:.0f} ms "
        f"after start(); {wall:.2f} s wall clock from spawning the processes (Python start-up included)"
    )

    # c was seen (a and b track it) but not reported: its token is not one they wait on
    a.poll_stats(lambda s: s["tracked"] == 2, 5, "a tracking b and c")
    b.poll_stats(lambda s: s["tracked"] == 2, 5, "b tracking a and c")
    assert {f["instance"] for f in a.found()} == {rb["instance"]}
    assert {f["instance"] for f in b.found()} == {ra["instance"]}
    c.poll_stats(lambda s: s["tracked"] == 2, 5, "c tracking a and b")
    assert c.found() == []

    # c now waits on the token too: its TXT is updated and a and b report it (once each)
    c.send(cmd="tokens", tokens=[other.hex(), token.hex()])
    t0 = time.monotonic()
    found_from(a, rc["instance"], token=token.hex())
    found_from(b, rc["instance"], token=token.hex())
    print(f"TXT update (new token) seen in {(time.monotonic() - t0) * 1000:.0f} ms")
    found_from(c, ra["instance"])
    found_from(c, rb["instance"])
    time.sleep(0.5)
    assert len([f for f in a.found() if f["instance"] == rb["instance"]]) == 1  # never repeated
    assert len([f for f in a.found() if f["instance"] == rc["instance"]]) == 1

    # c says goodbye on close: a forgets it
    c.send(cmd="close")
    c.wait_for(lambda e: e.get("ev") == "closed", 10, "close")
    a.poll_stats(lambda s: s["tracked"] == 1, 5, "a forgetting c after its goodbye")


def test_withdrawing_all_tokens_says_goodbye(net: Lab) -> None:
    token = os.urandom(32)
    a = net.node("a", tokens=[token.hex()], interfaces=["eth0"])
    b = net.node("b", tokens=[token.hex()])
    ra, _rb = ready(a), ready(b)
    found_from(b, ra["instance"])
    a.send(cmd="tokens", tokens=[])
    b.poll_stats(lambda s: s["tracked"] == 0, 5, f"b forgetting a after its goodbye {ra} {b.found()}")
    a.send(cmd="tokens", tokens=[token.hex()])
    b.wait_for(
        lambda e: e.get("ev") == "found" and e["instance"] == ra["instance"],
        DISCOVERY_TIMEOUT,
        "rediscovery",
        since=len(b.drain()),
    )
    assert len([f for f in b.found() if f["instance"] == ra["instance"]]) == 2


def test_ipv6_discovery() -> None:
    reason = netns_unavailable()
    if reason:
        skip_or_fail(reason)
    lab6 = Lab("6", ["a", "b"], ipv6=True)
    try:
        lab6.setup()
        token = os.urandom(32)
        a = lab6.node("a", tokens=[token.hex()], ip_version="v6")
        b = lab6.node("b", tokens=[token.hex()], ip_version="all", interfaces=["eth0"])
        ra, rb = ready(a), ready(b)
        fa = found_from(a, rb["instance"])
        fb = found_from(b, ra["instance"])
        hosts_a = [h for h, _ in fa["addresses"]]
        hosts_b = [h for h, _ in fb["addresses"]]
        assert "fd77::2" in hosts_a and all(":" in h for h in hosts_a)  # v6 only
        assert "fd77::1" in hosts_b
        assert all(p == rb["port"] for _, p in fa["addresses"])
        # one IPv6 interface: unscoped link-local addresses are given its index (else dropped)
        link_local = [h for h in hosts_a + hosts_b if h.startswith("fe80:")]
        assert len(link_local) == 2 and all("%" in h for h in link_local)
        print(
            f"\nIPv6 LAN discovery: {fa['t'] * 1000:.0f} ms / {fb['t'] * 1000:.0f} ms; a sees {hosts_a} "
            f"(b published {rb['published']}), b sees {hosts_b} (a published {ra['published']})"
        )
    finally:
        lab6.teardown()


def avahi_browse(env: dict[str, str], lab: Lab, host: str) -> list[list[str]]:
    result = subprocess.run(
        ["ip", "netns", "exec", lab.ns(host), "avahi-browse", "-rpt", "_discretpeer._udp"],
        capture_output=True,
        text=True,
        timeout=15,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return [line.split(";") for line in result.stdout.splitlines() if line.startswith("=")]


def test_avahi_sees_our_service_and_txt(net: Lab) -> None:
    env = net.start_avahi("d")
    token = os.urandom(32)
    a = net.node("a", tokens=[token.hex()], interfaces=["eth0"])
    ra = ready(a)
    label = ra["service"].split(".")[0]
    deadline = time.monotonic() + 10
    while True:
        lines = [f for f in avahi_browse(env, net, "d") if f[3] == label]
        if lines or time.monotonic() > deadline:
            break
    assert lines, "avahi-browse did not resolve our service"
    fields = lines[0]
    # =;iface;proto;name;type;domain;host;address;port;txt
    assert fields[2] == "IPv4" and fields[4] == "_discretpeer._udp"
    assert fields[6].startswith("dp-") and fields[6].endswith(".local")  # random host name, not ours
    assert fields[7] == "10.77.0.1" and int(fields[8]) == ra["port"]
    txt = set(fields[9].replace('"', "").split())
    assert {"v=1", f"i={ra['instance']}", f"t0={b64(token)}"} <= txt
    print(f"\navahi-browse: {';'.join(fields)}")


def test_service_published_by_avahi_is_found(net: Lab) -> None:
    env = net.start_avahi("d")
    token = os.urandom(32)
    instance = os.urandom(16).hex()
    a = net.node("a", tokens=[token.hex()])
    ready(a)
    t0 = time.monotonic()
    net.spawn(
        "d",
        [
            "avahi-publish",
            "-s",
            os.urandom(6).hex(),
            "_discretpeer._udp",
            "4321",
            "v=1",
            f"i={instance}",
            f"t0={b64(os.urandom(32))}",
            f"t1={b64(token)}",
        ],
        env=env,
        json_lines=False,
    )
    # and one that is not ours: garbage TXT, ignored
    net.spawn(
        "d", ["avahi-publish", "-s", "garbage", "_discretpeer._udp", "4322", "v=1", "i=zz"], env=env, json_lines=False
    )
    found = found_from(a, instance)
    assert found["token"] == token.hex()
    assert found["addresses"] == [["10.77.0.4", 4321]]
    print(f"\navahi-published service found {(time.monotonic() - t0) * 1000:.0f} ms after avahi-publish started")
    stats = a.poll_stats(lambda s: s["table"]["invalid_txt"] >= 1, 5, "garbage TXT rejected")
    assert stats["tracked"] == 1 and stats["found"] == 1


@pytest.mark.alone  # times asserted
def test_flood_keeps_state_bounded_and_the_loop_responsive(net: Lab) -> None:
    token = os.urandom(32)
    max_services = 64
    a = net.node("a", tokens=[token.hex()], max_services=max_services)
    ready(a)
    flood_config = {
        "ip": net.ipv4("c"),
        "replay_token": token.hex(),
        "random": 500,
        "replay": 20,
        "garbage": 60,
        "oversized": 30,
        "ptr_only": 200,
        "many_addresses": 1,
        "rounds": 3,
    }
    flood = net.spawn("c", [PYTHON, str(FLOOD), json.dumps(flood_config)])
    worst_answer = 0.0
    while flood.popen.poll() is None:
        t0 = time.monotonic()
        stats = a.stats()
        worst_answer = max(worst_answer, time.monotonic() - t0)
        assert stats["tracked"] <= max_services and stats["pending"] <= max_services
        time.sleep(0.2)
    summary = flood.wait_for(lambda e: "sent_packets" in e, 5, "flood summary")
    # a legitimate peer arriving after the flood is still found
    b = net.node("b", tokens=[token.hex()])
    rb = ready(b)
    found_from(a, rb["instance"])
    stats = a.stats()
    print(f"\nflood: {summary}; node a: {stats}; slowest stats answer {worst_answer * 1000:.0f} ms")
    assert stats["tracked"] <= max_services
    assert stats["pending"] <= max_services
    assert stats["table"]["invalid_txt"] > 0  # garbage and oversized rejected
    assert stats["table"]["full"] > 0  # random services beyond the cap dropped
    assert stats["max_lag"] < 0.5 and worst_answer < 1.0
    found = a.found()
    assert len(found) <= 20 + 1 + 1 and len({f["instance"] for f in found}) == len(found)
    many = [f for f in found if any(h.startswith("10.78.") for h, _ in f["addresses"])]
    for sighting in many:
        assert len(sighting["addresses"]) <= 8
        assert not any(h.startswith(("127.", "224.")) for h, _ in sighting["addresses"])
