"""discretpeer.send_pacer.SendPacer: the token bucket that paces a qh3 connection's sends."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.send_pacer import MIN_BURST_DATAGRAMS, MIN_BURST_SECONDS, PACING_GAIN, SendPacer

DATAGRAM = 1350


def _greedy(pacer: SendPacer, start: float, seconds: float, tick: float) -> tuple[int, int]:
    """A sender that always has data, woken every ``tick`` or at the pacer's time if sooner:
    (bytes sent, wakeups)."""
    now, sent, wakeups = start, 0, 0
    while now < start + seconds:
        wakeups += 1
        while pacer.may_send(now):
            pacer.sent(DATAGRAM, now)
            sent += DATAGRAM
        due = pacer.next_send_time(now)
        assert due is not None and due > now
        now = max(due, now + tick)
    return sent, wakeups


def test_nothing_is_paced_before_a_round_trip_estimate() -> None:
    pacer = SendPacer(DATAGRAM)
    assert pacer.may_send(0.0) and pacer.next_send_time(0.0) is None
    for _ in range(1000):
        pacer.sent(DATAGRAM, 0.0)
    assert pacer.may_send(0.0)
    pacer.set_rate(1_000_000, 0.0)  # an RTT of 0: unknown, still unpaced
    assert pacer.may_send(0.0)


@pytest.mark.parametrize(
    ("window", "rtt", "tick"),
    [(1_000_000, 0.08, 0.001), (100_000, 0.02, 0.001), (64_000, 0.2, 0.0001), (4_000_000, 0.08, 0.003)],
)
def test_a_sender_with_data_goes_at_the_pacing_rate(window: int, rtt: float, tick: float) -> None:
    pacer = SendPacer(DATAGRAM)
    pacer.set_rate(window, rtt)
    rate = PACING_GAIN * window / rtt
    burst = max(MIN_BURST_DATAGRAMS * DATAGRAM, rate * MIN_BURST_SECONDS)
    sent, _ = _greedy(pacer, 10.0, 1.0, tick)
    # one second of the rate, plus at most the full bucket it starts with and one overdraw
    assert rate - 2 * DATAGRAM <= sent <= rate + burst + 2 * DATAGRAM


def test_the_burst_covers_the_event_loops_timer_so_a_fast_path_is_not_slowed() -> None:
    """16 MB per 1 ms of round trip (a LAN): woken every 1 ms (the loop's timer), the sender still
    gets the full rate, in 2 ms bursts, not one datagram per wakeup."""
    pacer = SendPacer(DATAGRAM)
    pacer.set_rate(16_000_000, 0.001)
    sent, wakeups = _greedy(pacer, 0.0, 0.5, 0.001)
    assert sent >= 0.9 * 0.5 * PACING_GAIN * 16_000_000
    assert wakeups <= 0.5 / 0.001 + 1


def test_the_bucket_follows_a_falling_rate() -> None:
    pacer = SendPacer(DATAGRAM)
    pacer.set_rate(50_000_000, 0.01)  # 6.25 GB/s: a big bucket
    pacer.set_rate(20_000, 0.1)  # then a loss: 250 kB/s
    sent = 0
    while pacer.may_send(1.0):
        pacer.sent(DATAGRAM, 1.0)
        sent += DATAGRAM
    assert sent <= MIN_BURST_DATAGRAMS * DATAGRAM + DATAGRAM  # the new, small bucket, not the old one


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"gain": 0.0}, {"min_burst": 0}, {"min_burst_seconds": -1.0}):
        with pytest.raises(ValueError):
            SendPacer(DATAGRAM, **kwargs)  # type: ignore[arg-type]  # each a keyword of SendPacer
    with pytest.raises(ValueError):
        SendPacer(0)


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.05),  # time passes
        st.one_of(st.none(), st.tuples(st.integers(0, 10**8), st.floats(min_value=-1.0, max_value=2.0))),  # new rate
        st.integers(0, 50),  # datagrams the sender would like to send now
        st.integers(1, 65527),  # their size
    ),
    max_size=60,
)


@given(steps)
def test_the_bucket_never_exceeds_its_burst_nor_stalls_a_sender(script: list) -> None:
    pacer = SendPacer(DATAGRAM)
    now = 0.0
    for advance, rate, wanted, size in script:
        now += advance
        if rate is not None:
            pacer.set_rate(*rate)
        for _ in range(wanted):
            if not pacer.may_send(now):
                break
            pacer.sent(size, now)
        if pacer.rate:
            assert pacer.tokens <= pacer.burst
            assert pacer.tokens > -65527  # overdrawn by one datagram at most
            due = pacer.next_send_time(now)
            assert due is not None and due >= now
            later = copy.copy(pacer)  # asked about the future on a copy: time only moves forward
            assert later.may_send(due) and later.next_send_time(due) == due  # the promised time holds
        else:
            assert pacer.may_send(now) and pacer.next_send_time(now) is None


@given(steps)
def test_an_allowance_taken_once_lets_the_same_datagrams_go_as_asking_each_time(script: list) -> None:
    """What a sender that takes the allowance once per wakeup sends (discretpeer._qh3) is what
    one asking may_send before each datagram sends, and leaves the bucket the same."""
    each, once = SendPacer(DATAGRAM), SendPacer(DATAGRAM)
    now = 0.0
    for advance, rate, wanted, size in script:
        now += advance
        if rate is not None:
            each.set_rate(*rate)
            once.set_rate(*rate)
        sent_each = 0
        while sent_each < wanted and each.may_send(now):
            each.sent(size, now)
            sent_each += 1
        allowance = once.allowance(now)
        limit = float("inf") if allowance is None else allowance
        sent_once = paced = 0
        while sent_once < wanted and paced < limit:
            paced += size
            sent_once += 1
        if paced:
            once.sent(paced, now)
        assert sent_once == sent_each
        left = each.allowance(now)  # the bucket at this moment (refilled up to it)
        assert once.allowance(now) == (None if left is None else pytest.approx(left, rel=1e-9, abs=1e-6))
        assert once.next_send_time(now) == pytest.approx(each.next_send_time(now))
