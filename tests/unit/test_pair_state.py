"""PairState: one remote peer's state machine, without sockets (fed times, returns actions)."""

from __future__ import annotations

import pytest

from discretpeer.pair_state import (
    SPECULATION_GRACE,
    TRANSITIONS,
    Abandon,
    Dial,
    DialKind,
    Event,
    PairState,
    PairStateError,
    Phase,
    Watch,
)

LAN = ("192.168.1.7", 4000)
PUBLIC = ("203.0.113.7", 4000)
OTHER = ("203.0.113.8", 5000)
RELAY = ("discretpeer-path", 1)


def punching(*, dialer: bool = True, now: float = 0.0) -> PairState:
    state = PairState(is_dialer=dialer, introduced_at=now)
    state.start(now)
    return state


# --- the table ------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase,event", [(phase, event) for phase in Phase for event in Event], ids=lambda v: v.value)
def test_every_event_in_every_phase_follows_the_table_or_is_refused(phase: Phase, event: Event) -> None:
    state = PairState(is_dialer=True, introduced_at=0.0, phase=phase)
    after = TRANSITIONS[phase].get(event)
    if after is None:
        with pytest.raises(PairStateError, match=f"{event.value!r} is invalid in phase {phase.value!r}"):
            state._fire(event)
        assert state.phase is phase and state.history == []
    else:
        state._fire(event)
        assert state.phase is after and state.history == [(phase, event, after)]


def test_the_table_names_every_phase_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[Phase.CLOSED] == {}
    assert all(TRANSITIONS[phase].get(Event.CLOSE) is Phase.CLOSED for phase in Phase if phase is not Phase.CLOSED)


# --- punching and dialing -------------------------------------------------------------------------


def test_start_moves_to_punching_once() -> None:
    state = PairState(is_dialer=True, introduced_at=0.0)
    assert state.phase is Phase.INTRODUCED
    state.start(1.0)
    assert state.phase is Phase.PUNCHING and state.introduced_at == 1.0
    with pytest.raises(PairStateError):
        state.start(2.0)


def test_the_dialer_dials_the_best_confirmed_candidate() -> None:
    state = punching()
    actions = state.paths(1.0, [LAN, PUBLIC], None)
    assert actions == [Dial(1, DialKind.DIRECT, LAN)]
    assert state.phase is Phase.DIALING and state.busy and state.dialing(1)
    # one dial at a time: more paths while a real dial is in flight change nothing
    assert state.paths(1.1, [LAN, PUBLIC], RELAY) == []


def test_the_listener_never_dials_and_is_verified_by_what_it_accepts() -> None:
    state = punching(dialer=False)
    assert state.paths(1.0, [LAN], RELAY) == []
    assert state.speculate(1.0, [PUBLIC]) == []
    assert state.phase is Phase.PUNCHING
    assert state.verified("lan") == []
    assert state.phase is Phase.VERIFIED and state.path == "lan"


def test_a_failed_direct_dial_falls_back_to_the_next_path_then_the_relay() -> None:
    state = punching()
    [first] = state.paths(1.0, [LAN, PUBLIC], RELAY)
    assert state.dial_failed(first.attempt) is True
    assert state.phase is Phase.PUNCHING and state.failed == {LAN}
    [second] = state.paths(2.0, [LAN, PUBLIC], RELAY)
    assert second == Dial(2, DialKind.DIRECT, PUBLIC)
    assert state.dial_failed(second.attempt)
    [third] = state.paths(3.0, [LAN, PUBLIC], RELAY)
    assert third == Dial(3, DialKind.RELAY, RELAY)


def test_a_failed_relay_dial_frees_the_pair_and_a_new_attempt_dials_the_relay_again() -> None:
    """The issue-13 bug, at the level of the machine: a failed relay dial returns the pair to
    punching (never left "dialing"); the relay is not retried in the same attempt, but is in
    the next one."""
    state = punching()
    [dial] = state.paths(1.0, [], RELAY)
    assert dial.kind is DialKind.RELAY and state.phase is Phase.DIALING
    assert state.dial_failed(dial.attempt) is True
    assert state.phase is Phase.PUNCHING and state.dial is None and not state.busy
    assert state.failed == {RELAY}
    assert state.paths(2.0, [], RELAY) == []
    state.relay_requested(1.5)
    state.new_attempt(10.0)
    assert state.failed == set() and state.introduced_at == 10.0 and state.relay_requested_at is None
    assert state.paths(10.0, [], RELAY) == [Dial(2, DialKind.RELAY, RELAY)]


def test_the_late_failure_of_a_superseded_dial_is_ignored() -> None:
    state = punching()
    [speculative] = state.speculate(1.0, [PUBLIC])
    abandon, direct = state.paths(1.2, [LAN], None)
    assert abandon == Abandon(speculative.attempt) and direct == Dial(2, DialKind.DIRECT, LAN)
    assert state.dial_failed(speculative.attempt) is False
    assert state.phase is Phase.DIALING and state.dialing(direct.attempt) and state.failed == set()


# --- speculation ----------------------------------------------------------------------------------


def test_one_speculative_dial_per_attempt_to_a_public_address_not_failed() -> None:
    state = punching()
    assert state.speculate(1.0, []) == []
    [dial] = state.speculate(1.0, [PUBLIC, OTHER])
    assert dial == Dial(1, DialKind.SPECULATIVE, PUBLIC)
    assert state.speculate(1.1, [PUBLIC]) == []  # dialing already
    assert state.dial_failed(dial.attempt)
    assert state.failed == set()  # a speculative failure says nothing about the address
    assert state.speculate(2.0, [PUBLIC]) == []  # once per attempt
    state.new_attempt(5.0)
    assert state.speculate(5.0, [PUBLIC]) == [Dial(2, DialKind.SPECULATIVE, PUBLIC)]


def test_speculation_skips_failed_addresses() -> None:
    state = punching()
    [dial] = state.paths(1.0, [PUBLIC], None)
    state.dial_failed(dial.attempt)
    assert state.speculate(2.0, [PUBLIC]) == []
    assert state.speculate(2.0, [PUBLIC, OTHER]) == [Dial(2, DialKind.SPECULATIVE, OTHER)]


def test_a_silent_speculative_dial_gives_way_to_a_confirmed_path_or_the_relay() -> None:
    state = punching()
    [spec] = state.speculate(1.0, [PUBLIC])
    assert state.paths(1.1, [], None) == []  # nothing better yet
    assert state.paths(1.2, [], RELAY) == [Abandon(spec.attempt), Dial(2, DialKind.RELAY, RELAY)]
    assert [event for _, event, _ in state.history[-2:]] == [Event.DIAL_SUPERSEDED, Event.DIAL]


def test_a_speculative_dial_that_heard_an_answer_is_kept() -> None:
    state = punching()
    state.speculate(1.0, [PUBLIC])
    assert state.paths(1.2, [LAN], RELAY, heard=True) == []
    assert state.dialing(1)


def test_a_speculative_dial_whose_target_confirms_gets_a_grace_period() -> None:
    state = punching()
    [spec] = state.speculate(1.0, [PUBLIC])
    [watch] = state.paths(1.02, [PUBLIC], None)
    assert isinstance(watch, Watch) and watch.attempt == spec.attempt
    assert watch.at == pytest.approx(1.02 + 2 * 0.02 + SPECULATION_GRACE)
    assert state.paths(1.03, [PUBLIC], None) == []  # one watch per dial
    # the answer came: the watch does nothing
    assert state.speculation_timeout(spec.attempt, watch.at, heard=True) == []
    assert state.dialing(spec.attempt)


def test_a_speculative_dial_still_silent_when_its_watch_fires_gives_way() -> None:
    state = punching()
    [spec] = state.speculate(1.0, [PUBLIC])
    [watch] = state.paths(1.02, [PUBLIC], None)
    assert state.speculation_timeout(spec.attempt, watch.at, heard=False) == [Abandon(spec.attempt)]
    assert state.phase is Phase.PUNCHING
    assert state.paths(watch.at, [PUBLIC], None) == [Dial(2, DialKind.DIRECT, PUBLIC)]
    # a watch for a dial that is gone is ignored
    assert state.speculation_timeout(spec.attempt, watch.at + 1, heard=False) == []


# --- verified, upgrading, closed ------------------------------------------------------------------


def test_a_direct_dial_verified_ends_the_dial() -> None:
    state = punching()
    [dial] = state.paths(1.0, [LAN], None)
    assert state.verified("lan", attempt=dial.attempt, upgrade=True) == []
    assert state.phase is Phase.VERIFIED and state.path == "lan" and state.dial is None
    assert state.paths(2.0, [LAN, PUBLIC], RELAY) == []  # connected: nothing to dial
    assert state.speculate(2.0, [PUBLIC]) == []


def test_relay_then_direct_upgrade() -> None:
    state = punching()
    [dial] = state.paths(1.0, [], RELAY)
    state.verified("relay", attempt=dial.attempt, upgrade=True)
    assert state.phase is Phase.UPGRADING and state.path == "relay"
    state.switched("relay")  # moved to another beacon's session: still looking for a direct path
    assert state.phase is Phase.UPGRADING
    state.switched("direct")
    assert state.phase is Phase.VERIFIED and state.path == "direct"
    assert state.history[-1] == (Phase.UPGRADING, Event.UPGRADED, Phase.VERIFIED)
    state.switched("lan")  # a LAN path found later: still verified
    assert state.phase is Phase.VERIFIED and state.path == "lan"


def test_relay_without_a_direct_path_to_seek_is_verified_for_good() -> None:
    state = punching()
    [dial] = state.paths(1.0, [], RELAY)
    state.verified("relay", attempt=dial.attempt, upgrade=False)
    assert state.phase is Phase.VERIFIED and state.path == "relay"


def test_a_connection_accepted_while_dialing_supersedes_the_dial() -> None:
    state = punching()
    [dial] = state.paths(1.0, [PUBLIC], None)
    assert state.verified("direct") == [Abandon(dial.attempt, "the pair is connected")]
    assert state.phase is Phase.VERIFIED and state.dial is None
    assert state.dial_failed(dial.attempt) is False  # its late failure is ignored


def test_a_newer_connection_replaces_the_verified_one() -> None:
    state = punching(dialer=False)
    state.verified("direct")
    state.verified("relay", upgrade=True)
    assert state.phase is Phase.UPGRADING
    state.verified("lan")
    assert state.phase is Phase.VERIFIED and state.path == "lan"


def test_a_closed_connection_returns_the_pair_to_punching_and_it_dials_again() -> None:
    state = punching()
    [dial] = state.paths(1.0, [PUBLIC], None)
    state.verified("direct", attempt=dial.attempt)
    state.connection_closed()
    assert state.phase is Phase.PUNCHING and state.path is None
    assert state.paths(5.0, [PUBLIC], None) == [Dial(2, DialKind.DIRECT, PUBLIC)]


def test_close_abandons_a_dial_in_flight_and_nothing_is_valid_afterwards() -> None:
    state = punching()
    [dial] = state.paths(1.0, [PUBLIC], None)
    assert state.close() == [Abandon(dial.attempt, "pair forgotten")]
    assert state.phase is Phase.CLOSED
    assert state.paths(2.0, [PUBLIC], RELAY) == []  # explicit rule: only punching/dialing dial
    for event in (state.connection_closed, state.close, lambda: state.verified("direct")):
        with pytest.raises(PairStateError, match="invalid in phase 'closed'"):
            event()
    with pytest.raises(PairStateError):
        state.new_attempt(3.0)


def test_invalid_calls_name_the_phase() -> None:
    state = punching()
    with pytest.raises(PairStateError, match="path switch is invalid in phase 'punching'"):
        state.switched("direct")
    with pytest.raises(PairStateError, match="'connection closed' is invalid in phase 'punching'"):
        state.connection_closed()
    state.verified("direct")
    with pytest.raises(PairStateError, match="new attempt is invalid in phase 'verified'"):
        state.new_attempt(2.0)


# --- relay timing ---------------------------------------------------------------------------------


def test_relay_is_due_after_the_delay_or_at_once_when_direct_is_hopeless() -> None:
    state = punching(now=10.0)
    assert state.relay_due(10.0, hopeless=False, relay_after=1.5, retry=5.0, heard=False) == 11.5
    assert state.relay_due(10.0, hopeless=True, relay_after=1.5, retry=5.0, heard=False) == 10.0
    state.relay_requested(11.5)
    assert state.relay_due(12.0, hopeless=False, relay_after=1.5, retry=5.0, heard=False) == 16.5


def test_relay_waits_for_a_real_dial_in_flight_but_not_for_a_silent_speculation() -> None:
    state = punching(now=0.0)
    state.paths(1.0, [PUBLIC], None)
    assert state.relay_due(2.0, hopeless=False, relay_after=1.5, retry=5.0, heard=False) == pytest.approx(2.1)
    other = punching(now=0.0)
    other.speculate(0.0, [PUBLIC])
    assert other.relay_due(2.0, hopeless=False, relay_after=1.5, retry=5.0, heard=False) == 1.5
    assert other.relay_due(2.0, hopeless=False, relay_after=1.5, retry=5.0, heard=True) == pytest.approx(2.1)
