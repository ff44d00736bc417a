"""The punch state machine, fed times and probes (no sockets)."""

import os

from hypothesis import given
from hypothesis import strategies as st

from discretpeer.proto.probe import PROBE_SIZE, ProbeError, ProbeKind, build_probe, is_quic, parse_probe
from discretpeer.traversal import CandidateKind, PunchSession

KEY = os.urandom(32)
TOKEN = os.urandom(32)
LOW, HIGH = b"\x00" * 16, b"\xff" * 16


def session(local, remote, now=0.0):
    return PunchSession(token=TOKEN, probe_key=KEY, local_instance=local, remote_instance=remote, started_at=now)


def test_dialer_rule_is_symmetric():
    assert session(LOW, HIGH).is_dialer and not session(HIGH, LOW).is_dialer


def test_probes_at_once_then_on_schedule_then_stop():
    s = session(LOW, HIGH)
    sends = s.add_candidates([("203.0.113.5", 4000), ("192.168.1.5", 4000)], CandidateKind.PUBLIC, 0.0)
    assert len(sends) == 2  # immediately, not at the next tick
    assert all(len(data) == PROBE_SIZE and not is_quic(data) for _, data in sends)
    assert s.poll(0.0) and not s.poll(0.01)
    assert s.poll(0.06)  # fast interval: 50 ms
    rounds, now = 0, 0.06
    while now < 10:
        now += 0.01
        rounds += bool(s.poll(now))
    assert 50 < rounds < 100 and s.next_deadline() is None and not s.poll(20.0)


def test_a_poll_after_the_end_leaves_no_deadline_behind():
    """The driver sleeps until next_deadline(); a loop that wakes after the session ended (the
    last round was due just before the end) must not get a past deadline back, or it spins."""
    s = session(LOW, HIGH)
    s.add_candidates([("203.0.113.5", 4000)], CandidateKind.PUBLIC, 0.0)
    end = s.started_at + s.duration
    now = 0.0
    while s.next_deadline() is not None and s.next_deadline() < end - 0.001:
        now = s.next_deadline()
        s.poll(now)
    assert s.next_deadline() is not None  # the last round is due before the end...
    assert s.poll(end + 0.5) == []  # ...but the loop only wakes after it
    assert s.next_deadline() is None
    s.extend(end + 1.0, 3.0)
    assert s.next_deadline() == end + 1.0 and s.poll(end + 1.0)


def test_ping_pong_confirms_and_answers_the_observed_address():
    a, b = session(LOW, HIGH), session(HIGH, LOW)
    ((target, ping),) = a.add_candidates([("203.0.113.5", 4000)], CandidateKind.PUBLIC, 0.0)
    # b sees the ping from a different port (a symmetric NAT): it answers that address
    observed = ("203.0.113.9", 5555)
    ((reply_to, pong),) = b.on_probe(observed, parse_probe(ping), 0.02)
    assert reply_to == observed
    assert b.confirmed()[0].address == observed and b.confirmed()[0].kind is CandidateKind.REFLEXIVE
    assert a.on_probe(target, parse_probe(pong), 0.04) == []
    confirmed = a.confirmed()
    assert confirmed[0].address == target and abs(confirmed[0].rtt - 0.04) < 1e-9


def test_forged_or_replayed_pongs_are_rejected():
    a, b = session(LOW, HIGH), session(HIGH, LOW)
    ((target, ping),) = a.add_candidates([("203.0.113.5", 4000)], CandidateKind.PUBLIC, 0.0)
    stray = build_probe(ProbeKind.PONG, TOKEN, HIGH, os.urandom(8), KEY)
    assert a.on_probe(target, parse_probe(stray), 0.01) == [] and not a.confirmed()
    ((_, pong),) = b.on_probe(target, parse_probe(ping), 0.01)
    a.on_probe(target, parse_probe(pong), 0.02)
    before = a.stats.pongs_received
    a.on_probe(target, parse_probe(pong), 0.03)  # replay: nonce already used
    assert a.stats.pongs_received == before and a.stats.rejected == 1 + 1
    wrong_instance = build_probe(ProbeKind.PING, TOKEN, os.urandom(16), os.urandom(8), KEY)
    assert a.on_probe(target, parse_probe(wrong_instance), 0.03) == []


def test_probe_tag_needs_the_meeting_key():
    ping = parse_probe(build_probe(ProbeKind.PING, TOKEN, LOW, os.urandom(8), KEY))
    assert ping.verify(KEY) and not ping.verify(os.urandom(32))


def test_local_candidates_rank_first():
    s = session(LOW, HIGH)
    s.add_candidates([("203.0.113.5", 1)], CandidateKind.PUBLIC, 0)
    s.add_candidates([("192.168.1.2", 1)], CandidateKind.LOCAL, 0)
    for address in list(s.candidates):
        s.candidates[address].confirmed_at = 0.1
    assert s.confirmed()[0].kind is CandidateKind.LOCAL


def test_candidates_are_bounded():
    s = session(LOW, HIGH)
    s.add_candidates([("10.0.0.1", port) for port in range(1, 100)], CandidateKind.LOCAL, 0)
    assert len(s.candidates) == 16
    for port in range(100, 200):
        ping = parse_probe(build_probe(ProbeKind.PING, TOKEN, HIGH, os.urandom(8), KEY))
        s.on_probe(("10.0.0.2", port), ping, 0.1)
    assert len(s.candidates) == 16


@given(st.binary(max_size=200))
def test_parse_probe_rejects_garbage_cleanly(data):
    try:
        probe = parse_probe(data)
    except ProbeError:
        return
    assert len(data) == PROBE_SIZE and probe.kind in (ProbeKind.PING, ProbeKind.PONG)


@given(
    st.sampled_from(list(ProbeKind)),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=8, max_size=8),
)
def test_probe_roundtrip(kind, token, instance, nonce):
    probe = parse_probe(build_probe(kind, token, instance, nonce, KEY))
    assert (probe.kind, probe.token, probe.instance, probe.nonce) == (kind, token, instance, nonce)
    assert probe.verify(KEY)


def test_reflexive_address_learns_its_kind_from_a_later_introduction():
    s = session(HIGH, LOW)
    ping = parse_probe(build_probe(ProbeKind.PING, TOKEN, LOW, os.urandom(8), KEY))
    s.on_probe(("192.168.1.7", 4000), ping, 0.0)  # the probe came first
    assert s.candidates[("192.168.1.7", 4000)].kind is CandidateKind.REFLEXIVE
    s.add_candidates([("192.168.1.7", 4000)], CandidateKind.LOCAL, 0.1)
    assert s.candidates[("192.168.1.7", 4000)].kind is CandidateKind.LOCAL


def test_mapping_varies_needs_two_beacon_addresses():
    from discretpeer.traversal import mapping_varies

    one = ("198.51.100.7", 40000)
    assert mapping_varies({}) is None
    assert mapping_varies({("203.0.113.10", 4264): one}) is None
    # two beacons on one IP address do not tell an address-dependent mapping apart
    assert mapping_varies({("203.0.113.10", 4264): one, ("203.0.113.10", 4265): ("198.51.100.7", 40001)}) is None
    assert mapping_varies({("203.0.113.10", 4264): one, ("203.0.113.11", 4264): one}) is False
    assert mapping_varies({("203.0.113.10", 4264): one, ("203.0.113.11", 4264): ("198.51.100.7", 40001)}) is True
    assert mapping_varies({("203.0.113.10", 4264): one, ("203.0.113.11", 4264): ("198.51.100.8", 40000)}) is True


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["203.0.113.10", "203.0.113.11", "203.0.113.12"]), st.integers(1, 65535)),
        st.tuples(st.sampled_from(["198.51.100.7", "198.51.100.8"]), st.integers(1, 65535)),
        max_size=6,
    )
)
def test_mapping_varies_is_none_only_without_two_beacon_ips(observed_by):
    from discretpeer.traversal import mapping_varies

    result = mapping_varies(observed_by)
    assert (result is None) == (len({beacon[0] for beacon in observed_by}) < 2)


def test_global_addresses_rank_by_rtt_and_ipv6_wins_a_tie():
    """A reported global address (IPv6 without NAT, a port mapping) is not a LAN: it competes on
    round-trip time with the public address; IPv6 wins within 10 %."""
    s = session(LOW, HIGH)
    s.add_candidates([("203.0.113.5", 1)], CandidateKind.PUBLIC, 0)
    s.add_candidates([("2001:db8:1::2", 1), ("203.0.113.9", 7)], CandidateKind.LOCAL, 0)
    for address, rtt in ((("203.0.113.5", 1), 0.080), (("2001:db8:1::2", 1), 0.084), (("203.0.113.9", 7), 0.070)):
        s.candidates[address].confirmed_at, s.candidates[address].rtt = 0.1, rtt
    assert [c.address for c in s.confirmed()] == [("203.0.113.9", 7), ("2001:db8:1::2", 1), ("203.0.113.5", 1)]
    s.candidates[("2001:db8:1::2", 1)].rtt = 0.120  # clearly slower: IPv4 first
    assert s.confirmed()[-1].address == ("2001:db8:1::2", 1)
