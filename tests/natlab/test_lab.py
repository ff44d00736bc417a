"""Validation of the NAT lab itself, with plain UDP sockets only (agent.py in each host).

Each flavour is checked from two public hosts: the beacon (203.0.113.10) and pub2 (203.0.113.20).
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import sys
import time

import pytest

from .lab import CGNAT_RANGE, Lab, _namespaces

pytestmark = pytest.mark.natlab

BEACON = ("203.0.113.10", 5000)
BEACON_ALT = ("203.0.113.10", 5001)
PUB2 = ("203.0.113.20", 5000)
PUB2_ALT = ("203.0.113.20", 5001)


@pytest.fixture
def publics(standard_lab: Lab):
    """Echo sockets on the beacon (ports 5000, 5001) and on pub2 (5000, 5001, 443)."""
    beacon = standard_lab.agent("beacon")
    pub2 = standard_lab.agent("pub2")
    socks = {
        BEACON: (beacon, beacon.open(5000, echo=True)[0]),
        BEACON_ALT: (beacon, beacon.open(5001, echo=True)[0]),
        PUB2: (pub2, pub2.open(5000, echo=True)[0]),
        PUB2_ALT: (pub2, pub2.open(5001, echo=True)[0]),
        ("203.0.113.20", 443): (pub2, pub2.open(443, echo=True)[0]),
    }
    return socks


def reaches(sender_sock, target_agent, target_sock, to, marker: str, wait: float = 0.3) -> bool:
    """Send ``marker`` from (agent, sock) to ``to``; did (target_agent, target_sock) receive it?"""
    agent, sock = sender_sock
    agent.send(sock, to, marker)
    got = target_agent.drain(target_sock, wait=wait)
    return any(data == marker for data, _ in got)


# ------------------------------------------------------------------------------ the build


@pytest.mark.alone  # times asserted
def test_build_and_teardown(lab: Lab) -> None:
    started = time.monotonic()
    addresses = lab.build_standard()
    build = time.monotonic() - started
    assert addresses["beacon"] == "203.0.113.10"
    assert addresses["C"] == "203.0.113.40"
    assert lab.public_address("D1") == "203.0.113.40"
    assert lab.public_address("A2") == "203.0.113.2"
    namespaces = [ns for ns in _namespaces() if ns.startswith(lab._prefix)]
    assert len(namespaces) == len(lab.nodes) == 13
    proc = lab.popen("A1", [sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    lab.close()
    teardown = time.monotonic() - started
    print(
        f"\nbuild_standard: {build * 1000:.0f} ms for {len(lab.nodes)} namespaces; teardown: {teardown * 1000:.0f} ms"
    )
    assert proc.returncode is not None
    assert not [ns for ns in _namespaces() if ns.startswith(lab._prefix)]
    assert build < 5.0


def test_isolation_and_sysctls(standard_lab: Lab) -> None:
    """No default route anywhere, nothing outside the lab ranges routable, IPv6 off, rp_filter 0,
    no redirects, forwarding only on routers, lo up."""
    script = r"""
import json, os, subprocess
def read(p):
    return open("/proc/sys/net/" + p).read().strip()
ifaces = os.listdir("/sys/class/net")
print(json.dumps({
    "routes": subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout,
    "outside": subprocess.run(["ip", "route", "get", "198.51.100.7"], capture_output=True, text=True).returncode,
    "ipv6": [read(f"ipv6/conf/{i}/disable_ipv6") for i in ifaces if os.path.exists(f"/proc/sys/net/ipv6/conf/{i}")],
    "rp_filter": {i: read(f"ipv4/conf/{i}/rp_filter") for i in ifaces + ["all", "default"]},
    "redirects": {
        i: read(f"ipv4/conf/{i}/send_redirects") + read(f"ipv4/conf/{i}/accept_redirects") for i in ifaces + ["all"]
    },
    "forward": read("ipv4/ip_forward"),
    "lo": open("/sys/class/net/lo/operstate").read().strip(),
}))
"""
    for name, node in standard_lab.nodes.items():
        result = json.loads(standard_lab.run(name, [sys.executable, "-c", script]).stdout)
        assert "default" not in result["routes"], (name, result["routes"])
        assert result["outside"] != 0, f"{name} can route to 198.51.100.7"
        assert set(result["ipv6"]) <= {"1"}, (name, result["ipv6"])
        assert set(result["rp_filter"].values()) == {"0"}, (name, result["rp_filter"])
        assert set(result["redirects"].values()) == {"00"}, (name, result["redirects"])
        assert result["forward"] == ("1" if node.kind in ("router", "core") else "0"), name
        assert result["lo"] in ("unknown", "up"), name
    core_routes = standard_lab.run("core", ["ip", "-4", "route"]).stdout
    for line in core_routes.splitlines():
        assert line.split()[0].startswith("203.0.113."), line


def test_connectivity(standard_lab: Lab, publics) -> None:
    """Every host behind a NAT reaches both public hosts; the beacon sees the outermost public address."""
    for host in ("A1", "A2", "B1", "D1", "E1"):
        agent = standard_lab.agent(host)
        sock, _ = agent.open()
        for echo in (BEACON, PUB2):
            seen = agent.whoami(sock, echo)
            assert seen is not None, f"{host} cannot reach {echo}"
            assert seen[0] == standard_lab.public_address(host)
    pub2 = standard_lab.agent("pub2")
    sock, port = pub2.open()
    assert pub2.whoami(sock, BEACON) == ("203.0.113.20", port), "no NAT between public hosts"
    # private ranges are not routed on the internet: the send fails at once (no route)
    beacon_agent, beacon_sock = publics[BEACON]
    assert beacon_agent.send(beacon_sock, ("192.168.1.2", 40000), "x") is False
    assert beacon_agent.send(beacon_sock, ("100.64.0.2", 40000), "x") is False


# ------------------------------------------------------------------------------ flavours


def mapping_and_filtering(lab: Lab, publics, router: str, host: str, local_port: int):
    """Open a socket on ``host``, talk to BEACON only; then see which public sockets get in."""
    agent = lab.agent(host)
    sock, _ = agent.open(local_port)
    via_beacon = agent.whoami(sock, BEACON)
    assert via_beacon is not None
    mapping = via_beacon
    inbound = {}
    for name, src in (("beacon_same_port", BEACON), ("beacon_other_port", BEACON_ALT), ("pub2", PUB2)):
        src_agent, src_sock = publics[src]
        marker = f"in-{name}-{time.monotonic_ns()}"
        src_agent.send(src_sock, mapping, marker)
        got = agent.drain(sock, wait=0.25)
        inbound[name] = any(data == marker for data, _ in got)
    via_pub2 = agent.whoami(sock, PUB2)
    return agent, sock, mapping, via_pub2, inbound


def test_port_restricted(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "port_restricted")
    _, _, mapping, via_pub2, inbound = mapping_and_filtering(standard_lab, publics, "A", "A1", 41000)
    assert mapping == ("203.0.113.2", 41000), "masquerade keeps the port"
    assert via_pub2 == mapping, "endpoint-independent mapping"
    assert inbound == {"beacon_same_port": True, "beacon_other_port": False, "pub2": False}


def test_address_restricted(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "address_restricted")
    _, _, mapping, via_pub2, inbound = mapping_and_filtering(standard_lab, publics, "A", "A1", 41001)
    assert mapping == ("203.0.113.2", 41001)
    assert via_pub2 == mapping
    assert inbound == {"beacon_same_port": True, "beacon_other_port": True, "pub2": False}


def test_full_cone(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "full_cone")
    agent, sock, mapping, via_pub2, inbound = mapping_and_filtering(standard_lab, publics, "A", "A1", 41002)
    assert mapping == ("203.0.113.2", 41002)
    assert via_pub2 == mapping
    assert inbound == {"beacon_same_port": True, "beacon_other_port": True, "pub2": True}
    # a reply to a stranger who came in leaves from the same mapping
    pub2_agent, pub2_alt = publics[PUB2_ALT]
    pub2_agent.send(pub2_alt, mapping, "hello from a stranger")
    ((data, src),) = [p for p in agent.drain(sock, wait=0.25) if p[0] == "hello from a stranger"]
    assert src == PUB2_ALT
    assert agent.whoami(sock, PUB2_ALT) == mapping


def test_full_cone_keeps_mapping_when_port_taken(standard_lab: Lab, publics) -> None:
    """Two LAN hosts with the same local port: the second gets another external port, and keeps
    it for every destination (endpoint-independent mapping, unlike plain masquerade)."""
    standard_lab.set_flavour("A", "full_cone")
    a1, a2 = standard_lab.agent("A1"), standard_lab.agent("A2")
    s1, _ = a1.open(41003)
    s2, _ = a2.open(41003)
    m1 = a1.whoami(s1, BEACON)
    m2 = a2.whoami(s2, BEACON)
    assert m1 == ("203.0.113.2", 41003)
    assert m2 is not None and m2[1] != 41003
    assert a2.whoami(s2, PUB2) == m2
    assert a2.whoami(s2, BEACON_ALT) == m2


@pytest.mark.parametrize("flavour", ["symmetric", "symmetric_random"])
def test_symmetric(standard_lab: Lab, publics, flavour: str) -> None:
    standard_lab.set_flavour("A", flavour)
    agent, sock, mapping, via_pub2, inbound = mapping_and_filtering(standard_lab, publics, "A", "A1", 41004)
    via_beacon_alt = agent.whoami(sock, BEACON_ALT)
    ports = {mapping[1], via_pub2[1], via_beacon_alt[1]}
    print(
        f"\n{flavour}: external ports for beacon:5000, pub2:5000, beacon:5001 = "
        f"{mapping[1]}, {via_pub2[1]}, {via_beacon_alt[1]}"
    )
    assert len(ports) == 3, "a new external port per destination"
    assert inbound == {"beacon_same_port": True, "beacon_other_port": False, "pub2": False}


def test_unsolicited_inbound_is_dropped_and_steals_nothing(standard_lab: Lab, publics) -> None:
    """A packet that arrives at the router before the mapping exists is dropped and leaves no
    conntrack entry; the host then gets the very port it asked for."""
    standard_lab.set_flavour("A", "port_restricted")
    pub2_agent, pub2_sock = publics[PUB2]
    pub2_agent.send(pub2_sock, ("203.0.113.2", 41005), "too early")
    time.sleep(0.05)
    assert "dport=41005" not in standard_lab.conntrack("A")
    agent = standard_lab.agent("A1")
    sock, _ = agent.open(41005)
    assert agent.drain(sock, wait=0.1) == []
    assert agent.whoami(sock, PUB2) == ("203.0.113.2", 41005)
    assert agent.whoami(sock, BEACON) == ("203.0.113.2", 41005)


def test_set_flavour_flushes_state(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "full_cone")
    agent = standard_lab.agent("A1")
    sock, _ = agent.open(41006)
    assert agent.whoami(sock, BEACON) == ("203.0.113.2", 41006)
    assert "dport=41006" in standard_lab.conntrack("A")
    assert "41006" in standard_lab.ruleset("A")  # learned mapping
    standard_lab.set_flavour("A", "port_restricted")
    assert "dport=41006" not in standard_lab.conntrack("A")
    assert "41006" not in standard_lab.ruleset("A")
    # full cone is gone: pub2 no longer gets in
    pub2_agent, pub2_sock = publics[PUB2]
    assert not reaches((pub2_agent, pub2_sock), agent, sock, ("203.0.113.2", 41006), "after switch", wait=0.2)


# ------------------------------------------------------------------------------ hairpin


@pytest.mark.parametrize("flavour", ["port_restricted", "address_restricted", "full_cone", "symmetric"])
def test_hairpin(standard_lab: Lab, publics, flavour: str) -> None:
    """A1 reaches A2 at the router's public address and A2's mapping; A2 sees A1's public mapping."""
    standard_lab.set_flavour("A", flavour, hairpin=True)
    a1, a2 = standard_lab.agent("A1"), standard_lab.agent("A2")
    s1, _ = a1.open(41010)
    s2, _ = a2.open(41011)
    m1, m2 = a1.whoami(s1, BEACON), a2.whoami(s2, BEACON)
    a1.send(s1, m2, "hairpin 1->2")
    got = a2.drain(s2, wait=0.25)
    assert [d for d, _ in got] == ["hairpin 1->2"]
    src = got[0][1]
    assert src[0] == "203.0.113.2", "the hairpinned packet carries the router's public address"
    if flavour != "symmetric":
        assert src == m1, "and A1's public mapping"
    a2.send(s2, src, "hairpin reply")
    assert [d for d, _ in a1.drain(s1, wait=0.25)] == ["hairpin reply"]


def test_no_hairpin(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "full_cone", hairpin=False)
    a1, a2 = standard_lab.agent("A1"), standard_lab.agent("A2")
    s1, _ = a1.open(41012)
    s2, _ = a2.open(41013)
    a1.whoami(s1, BEACON)
    m2 = a2.whoami(s2, BEACON)
    a1.send(s1, m2, "no hairpin")
    assert a2.drain(s2, wait=0.25) == []
    # but the LAN path works
    a1.send(s1, (standard_lab.address("A2"), 41013), "lan path")
    assert [d for d, _ in a2.drain(s2, wait=0.25)] == ["lan path"]


# ------------------------------------------------------------------------------ UDP blocking


def test_udp443_only(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "udp443_only")
    agent = standard_lab.agent("A1")
    sock, _ = agent.open(41020)
    assert agent.whoami(sock, ("203.0.113.20", 443)) == ("203.0.113.2", 41020)
    assert agent.whoami(sock, PUB2, timeout=0.3) is None
    assert agent.whoami(sock, BEACON, timeout=0.3) is None
    pub2_agent, pub2_sock = publics[PUB2]
    assert pub2_agent.drain(pub2_sock, wait=0.05) == []


def test_udp_blocked(standard_lab: Lab, publics) -> None:
    standard_lab.set_flavour("A", "udp_blocked")
    agent = standard_lab.agent("A1")
    sock, _ = agent.open(41021)
    for echo in (("203.0.113.20", 443), PUB2, BEACON):
        assert agent.whoami(sock, echo, timeout=0.2) is None


# ------------------------------------------------------------------------------ CGNAT


def test_cgnat_double_nat(standard_lab: Lab, publics) -> None:
    """D1 and E1 sit behind home routers D and E, themselves behind the CGNAT C."""
    assert ipaddress.ip_address(standard_lab.address("D")) in CGNAT_RANGE
    d1, e1 = standard_lab.agent("D1"), standard_lab.agent("E1")
    sd, _ = d1.open(42000)
    se, _ = e1.open(42000)
    md, me = d1.whoami(sd, BEACON), e1.whoami(se, BEACON)
    assert md == ("203.0.113.40", 42000)
    assert me is not None and me[0] == "203.0.113.40" and me[1] != 42000  # same port taken: another one
    assert d1.whoami(sd, PUB2) == md
    # C forwards inbound only on existing mappings
    pub2_agent, pub2_sock = publics[PUB2]
    assert reaches((pub2_agent, pub2_sock), d1, sd, md, "via two NATs", wait=0.2)
    pub2_alt_agent, pub2_alt = publics[PUB2_ALT]
    assert not reaches((pub2_alt_agent, pub2_alt), d1, sd, md, "filtered", wait=0.2)
    # the CGNAT hairpins between its customers; with full cone at C and D/E, a packet gets across
    standard_lab.set_flavour("C", "full_cone", hairpin=True)
    standard_lab.set_flavour("D", "full_cone")
    standard_lab.set_flavour("E", "full_cone")
    md, me = d1.whoami(sd, BEACON), e1.whoami(se, BEACON)
    d1.send(sd, me, "customer to customer")
    got = e1.drain(se, wait=0.25)
    assert [d for d, _ in got] == ["customer to customer"]
    assert got[0][1] == md


# ------------------------------------------------------------------------------ delay


@pytest.mark.alone  # times asserted
def test_delay(standard_lab: Lab, publics) -> None:
    agent = standard_lab.agent("A1")
    sock, _ = agent.open(42100)
    base = agent.rtt(sock, BEACON, count=10, interval=0.01)
    standard_lab.set_delay(20)  # per internet link: A1 -> beacon crosses 2 links each way
    delayed = agent.rtt(sock, BEACON, count=10, interval=0.01)
    standard_lab.set_delay(10, node="beacon")  # A link 20, beacon link 10: RTT 60
    mixed = agent.rtt(sock, BEACON, count=5, interval=0.01)
    standard_lab.set_delay(0)
    after = agent.rtt(sock, BEACON, count=5, interval=0.01)
    ms = lambda xs: f"median {statistics.median(xs) * 1000:.2f} ms, max {max(xs) * 1000:.2f} ms"  # noqa: E731 - a one-line formatter local to the test
    print(
        f"\ndelay backend {standard_lab.delay_backend()}: RTT A1<->beacon no delay {ms(base)}; "
        f"20 ms/link (expect 80) {ms(delayed)}; A 20 + beacon 10 (expect 60) {ms(mixed)}; back to 0 {ms(after)}"
    )
    assert len(base) == len(delayed) == 10 and len(mixed) == len(after) == 5
    assert statistics.median(base) < 0.01
    for expected, rtts in ((0.080, delayed), (0.060, mixed)):
        assert min(rtts) >= expected, rtts  # never less than the configured delay
        assert statistics.median(rtts) < expected + 0.010, rtts
        assert max(rtts) < expected + 0.050, rtts
    assert statistics.median(after) < 0.01


def udp_sender(port: int, payload: str, pause_every: int = 0) -> str:
    """A program sending 2000 datagrams (``payload``: an expression of ``i``) to the beacon's
    ``port``, pausing 10 ms after every ``pause_every`` of them (0: never)."""
    pause = f"    if i % {pause_every} == {pause_every - 1}: time.sleep(0.01)\n" if pause_every else ""
    return (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "for i in range(2000):\n"
        f"    s.sendto({payload}, ('203.0.113.10', {port}))\n" + pause
    )


def test_delay_keeps_order(standard_lab: Lab, publics) -> None:
    """A burst through the delayed core arrives complete and in order."""
    standard_lab.set_delay(5)
    beacon_agent = standard_lab.agent("beacon")
    beacon_sock, port = beacon_agent.open(5002, rcvbuf=8 << 20)
    code = udp_sender(5002, "b'seq %d' % i")
    started = time.monotonic()
    standard_lab.run("A1", [sys.executable, "-c", code])
    got = beacon_agent.drain(beacon_sock, wait=0.5)
    elapsed = time.monotonic() - started
    seqs = [int(d.split()[1]) for d, _ in got if d.startswith("seq ")]
    print(f"\n2000-datagram burst through the delayer: {len(seqs)} arrived ({elapsed * 1000:.0f} ms incl. 0.5 s drain)")
    assert seqs == list(range(2000))


@pytest.mark.alone  # times asserted
def test_rate_limit(standard_lab: Lab, publics) -> None:
    """A home line at 8 Mbit/s (1 MB/s): 2 MB offered over ~1 s, about 1 MB arrives; without the
    limit all of it does."""
    beacon_agent = standard_lab.agent("beacon")
    beacon_sock, _ = beacon_agent.open(5003, rcvbuf=8 << 20)
    code = udp_sender(5003, "b'%d ' % i + b'x' * 994", pause_every=20)

    def offered_and_received() -> tuple[float, int]:
        started = time.monotonic()
        standard_lab.run("A1", [sys.executable, "-c", code])
        seconds = time.monotonic() - started
        got = beacon_agent.drain(beacon_sock, wait=0.5)
        return seconds, sum(len(data) for data, _ in got)

    standard_lab.set_rate("A", 8)
    try:
        seconds, limited = offered_and_received()
    finally:
        standard_lab.set_rate("A", 0)
    _, free = offered_and_received()
    print(f"\n2 MB offered over {seconds:.2f} s: {limited / 1e6:.2f} MB through 8 Mbit/s, {free / 1e6:.2f} MB without")
    assert free >= 0.95 * 2000 * 1000  # the limit is gone (the module's lab may still delay)
    # the line's rate over the sending time, plus what its 80 ms queue and 4 ms bucket held at the end
    assert 0.8e6 * seconds <= limited <= 1e6 * (seconds + 0.1) + 20_000, (seconds, limited)


# ------------------------------------------------------------------------------ capture


def test_capture(standard_lab: Lab, publics) -> None:
    marker = f"PLAINTEXT-MARKER-{time.monotonic_ns()}"
    on_beacon = standard_lab.capture("beacon", bpf="udp")
    on_core = standard_lab.capture("core", iface="c-A", bpf="udp")
    agent = standard_lab.agent("A1")
    sock, _ = agent.open(42200)
    assert agent.whoami(sock, BEACON) == ("203.0.113.2", 42200)
    agent.send(sock, PUB2, marker)
    time.sleep(0.1)
    beacon_packets = on_beacon.stop()
    core_packets = on_core.stop()
    assert beacon_packets, "the beacon saw the whoami exchange"
    assert all(p.proto == "udp" for p in beacon_packets)
    assert {(p.src, p.sport) for p in beacon_packets if p.dst == "203.0.113.10"} == {("203.0.113.2", 42200)}
    assert on_beacon.payload_contains(marker.encode()) == [], "the marker went to pub2, not to the beacon"
    hits = on_core.payload_contains(marker.encode())  # the datagram and pub2's echo of it
    assert [(p.src, p.sport, p.dst, p.dport) for p in hits] == [
        ("203.0.113.2", 42200, "203.0.113.20", 5000),
        ("203.0.113.20", 5000, "203.0.113.2", 42200),
    ]
    assert hits[0].payload == marker.encode()
    assert len(core_packets) == len(beacon_packets) + 2
