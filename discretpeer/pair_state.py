"""What we are doing about one remote peer (sans-I/O): the state machine of a pair.

A pair is one remote peer instance met on one meeting. Its life::

    INTRODUCED --start--> PUNCHING --dial--> DIALING --dial failed / superseded--> PUNCHING
                              |                 |
                              +---verified------+--> VERIFIED (direct, lan, or relay for good)
                              +---verified over the relay--> UPGRADING --upgraded--> VERIFIED
    VERIFIED / UPGRADING --connection closed--> PUNCHING;   any state --close--> CLOSED

Probing itself is :class:`~discretpeer.traversal.PunchSession`'s; this machine decides what to
dial and when, from what the owner tells it (confirmed candidates, a relay route, whether the
dial in flight has heard anything), and returns actions: :class:`Dial`, :class:`Abandon` (a dial
superseded), :class:`Watch` (call :meth:`PairState.speculation_timeout` at a time). The owner
(:class:`~discretpeer.peer.Peer`) runs them. Only the dialer (the lower instance value) dials;
the other side reaches VERIFIED through connections it accepts.

Every phase change goes through :data:`TRANSITIONS` (in the style of h11's ``_state.py``); an
event a phase has no rule for raises :class:`PairStateError`. A late result of a dial that was
superseded is not an event: :meth:`PairState.dial_failed` and :meth:`PairState.verified` ignore
it explicitly (the attempt number says which dial it was).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from discretpeer.addresses import Addr

PathKind = Literal["direct", "lan", "relay"]

# how long to give a speculative dial whose target just confirmed, beyond twice its age: its
# answer needs a whole round trip, the probe that confirmed the address only half of one
SPECULATION_GRACE = 0.05


class PairStateError(RuntimeError):
    """An event arrived in a phase that has no rule for it (a bug in the owner)."""


class Phase(enum.StrEnum):
    INTRODUCED = "introduced"  # known, punching not started
    PUNCHING = "punching"  # probing candidates, no dial in flight, no connection
    DIALING = "dialing"  # one QUIC dial in flight (see DialKind)
    VERIFIED = "verified"  # a connection proved the other peer's identity
    UPGRADING = "upgrading"  # verified through the relay, punching on for a direct path
    CLOSED = "closed"  # forgotten: no event is valid any more


class DialKind(enum.StrEnum):
    DIRECT = "direct"  # to a confirmed candidate
    SPECULATIVE = "speculative"  # to the observed public address, before any probe confirmed it
    RELAY = "relay"  # through a relay session a beacon granted


class Event(enum.StrEnum):
    START = "start"
    DIAL = "dial"
    DIAL_FAILED = "dial failed"
    DIAL_SUPERSEDED = "dial superseded"  # a silent speculative dial gives way to a better path
    VERIFIED = "verified"  # over a direct or LAN path, or over the relay with no upgrade to seek
    VERIFIED_RELAYED = "verified relayed"  # over the relay, a direct path still sought
    UPGRADED = "upgraded"  # the relayed connection moved to a direct path
    CONNECTION_CLOSED = "connection closed"
    CLOSE = "close"


P, E = Phase, Event
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    P.INTRODUCED: {E.START: P.PUNCHING, E.CLOSE: P.CLOSED},
    P.PUNCHING: {
        E.DIAL: P.DIALING,
        # an incoming connection (we are not the dialer, or the other side dialed anyway)
        E.VERIFIED: P.VERIFIED,
        E.VERIFIED_RELAYED: P.UPGRADING,
        E.CLOSE: P.CLOSED,
    },
    P.DIALING: {
        E.DIAL_FAILED: P.PUNCHING,
        E.DIAL_SUPERSEDED: P.PUNCHING,
        E.VERIFIED: P.VERIFIED,
        E.VERIFIED_RELAYED: P.UPGRADING,
        E.CLOSE: P.CLOSED,
    },
    P.VERIFIED: {
        # a newer connection of the same pair replaces the one we had
        E.VERIFIED: P.VERIFIED,
        E.VERIFIED_RELAYED: P.UPGRADING,
        E.CONNECTION_CLOSED: P.PUNCHING,
        E.CLOSE: P.CLOSED,
    },
    P.UPGRADING: {
        E.VERIFIED: P.VERIFIED,
        E.VERIFIED_RELAYED: P.UPGRADING,
        E.UPGRADED: P.VERIFIED,
        E.CONNECTION_CLOSED: P.PUNCHING,
        E.CLOSE: P.CLOSED,
    },
    P.CLOSED: {},
}
del P, E


@dataclass(frozen=True)
class Dial:
    """Start a QUIC dial to ``target`` (a candidate's address, or the relay route's virtual one)."""

    attempt: int
    kind: DialKind
    target: Addr


@dataclass(frozen=True)
class Abandon:
    """Cancel dial ``attempt`` and close its connection: a better path superseded it."""

    attempt: int
    reason: str = "superseded by a confirmed path"


@dataclass(frozen=True)
class Watch:
    """Call :meth:`PairState.speculation_timeout` for ``attempt`` at ``at``."""

    attempt: int
    at: float


Action = Dial | Abandon | Watch


@dataclass
class DialInFlight:
    attempt: int
    kind: DialKind
    target: Addr
    started: float
    watch_at: float | None = None  # a Watch was handed out for this dial


@dataclass
class PairState:
    is_dialer: bool
    introduced_at: float
    phase: Phase = Phase.INTRODUCED
    dial: DialInFlight | None = None
    path: PathKind | None = None  # of the verified connection
    failed: set[Addr] = field(default_factory=set)  # targets whose dial failed in this attempt
    speculated: bool = False  # one speculative dial per attempt
    relay_requested_at: float | None = None
    history: list[tuple[Phase, Event, Phase]] = field(default_factory=list, repr=False)
    _attempts: int = 0

    # --- the table ----------------------------------------------------------------------------

    def _fire(self, event: Event) -> None:
        after = TRANSITIONS[self.phase].get(event)
        if after is None:
            raise PairStateError(f"pair state: event {event.value!r} is invalid in phase {self.phase.value!r}")
        if len(self.history) >= 32:
            del self.history[0]
        self.history.append((self.phase, event, after))
        self.phase = after

    # --- punching -----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The punch session began."""
        self._fire(Event.START)
        self.introduced_at = now

    def new_attempt(self, now: float) -> None:
        """A new introduction of a pair we knew, with no connection: dial afresh (old failures
        may not hold any more: the NATs may have changed), relay afresh, speculate once more."""
        if self.phase not in (Phase.PUNCHING, Phase.DIALING):
            raise PairStateError(f"pair state: a new attempt is invalid in phase {self.phase.value!r}")
        self.failed.clear()
        self.introduced_at = now
        self.relay_requested_at = None
        self.speculated = False

    @property
    def busy(self) -> bool:
        """Connected or dialing: a pair the owner must keep."""
        return self.phase in (Phase.DIALING, Phase.VERIFIED, Phase.UPGRADING)

    # --- dialing ------------------------------------------------------------------------------

    def dialing(self, attempt: int) -> bool:
        """Is ``attempt`` the dial in flight (not superseded, not finished)?"""
        return self.dial is not None and self.dial.attempt == attempt

    def silent_speculation(self, heard: bool) -> bool:
        """A speculative dial in flight that has received nothing (``heard``: the owner knows)."""
        return self.dial is not None and self.dial.kind is DialKind.SPECULATIVE and not heard

    def paths(self, now: float, candidates: Sequence[Addr], relay: Addr | None, *, heard: bool = False) -> list[Action]:
        """Usable paths changed: ``candidates`` are the confirmed direct ones, best first;
        ``relay`` the relay route's address, if a relay was granted. Dial the best one. A dial
        in flight stays, except a silent speculative one, which gives way to a confirmed path
        (unless that path is its own target: then its answer is on the way, so it gets a
        grace period through a :class:`Watch`)."""
        if not self.is_dialer or self.phase not in (Phase.PUNCHING, Phase.DIALING):
            return []
        candidates = [address for address in candidates if address not in self.failed]
        usable_relay = relay if relay is not None and relay not in self.failed else None
        actions: list[Action] = []
        if self.dial is not None:
            if not (self.silent_speculation(heard) and (candidates or usable_relay)):
                return []
            if candidates and candidates[0] == self.dial.target:
                if self.dial.watch_at is not None:
                    return []
                self.dial.watch_at = now + 2 * (now - self.dial.started) + SPECULATION_GRACE
                return [Watch(self.dial.attempt, self.dial.watch_at)]
            actions.append(self._supersede())
        if candidates:
            actions.append(self._start_dial(DialKind.DIRECT, candidates[0], now))
        elif usable_relay is not None:
            actions.append(self._start_dial(DialKind.RELAY, usable_relay, now))
        return actions

    def speculate(self, now: float, public: Sequence[Addr]) -> list[Action]:
        """Dial the observed public address at once, while probes are still on their way (once
        per attempt; only with nothing else in flight)."""
        if not self.is_dialer or self.phase is not Phase.PUNCHING or self.speculated:
            return []
        public = [address for address in public if address not in self.failed]
        if not public:
            return []
        self.speculated = True
        return [self._start_dial(DialKind.SPECULATIVE, public[0], now)]

    def speculation_timeout(self, attempt: int, now: float, *, heard: bool) -> list[Action]:
        """A :class:`Watch` is due: a speculative dial still silent lost its Initial (the other
        NAT was not open yet); it gives way (the owner then offers the paths again)."""
        if self.dial is None or self.dial.attempt != attempt:
            return []  # explicit rule: the watched dial ended meanwhile
        self.dial.watch_at = None
        if not self.silent_speculation(heard):
            return []
        return [self._supersede()]

    def dial_failed(self, attempt: int) -> bool:
        """Dial ``attempt`` failed. False if it had been superseded (nothing changes: the pair
        is another dial's business now); else the pair punches again and the owner should offer
        the paths again. A failed target is not dialed again in this attempt, except a
        speculative one (its failure says nothing about the address)."""
        dial = self.dial
        if dial is None or dial.attempt != attempt:
            return False
        if dial.kind is not DialKind.SPECULATIVE:
            self.failed.add(dial.target)
        self.dial = None
        self._fire(Event.DIAL_FAILED)
        return True

    def _start_dial(self, kind: DialKind, target: Addr, now: float) -> Dial:
        self._fire(Event.DIAL)
        self._attempts += 1
        self.dial = DialInFlight(self._attempts, kind, target, now)
        return Dial(self._attempts, kind, target)

    def _supersede(self) -> Abandon:
        assert self.dial is not None
        attempt = self.dial.attempt
        self.dial = None
        self._fire(Event.DIAL_SUPERSEDED)
        return Abandon(attempt)

    # --- connected ----------------------------------------------------------------------------

    def verified(self, path: PathKind, *, attempt: int | None = None, upgrade: bool = False) -> list[Action]:
        """A connection of this pair proved the other's identity: ours (``attempt``) or one we
        accepted (None). ``upgrade``: over the relay, keep looking for a direct path. Another
        dial still in flight is abandoned: the pair has its connection."""
        actions: list[Action] = []
        if self.dial is not None:
            if self.dial.attempt != attempt:
                actions.append(Abandon(self.dial.attempt, "the pair is connected"))
            self.dial = None
        self._fire(Event.VERIFIED_RELAYED if path == "relay" and upgrade else Event.VERIFIED)
        self.path = path
        return actions

    def switched(self, path: PathKind) -> None:
        """The connection's path changed (relay → direct is the upgrade; a NAT rebinding or a
        LAN path found later keep it verified; a move to another relay session changes nothing)."""
        if self.phase not in (Phase.VERIFIED, Phase.UPGRADING):
            raise PairStateError(f"pair state: a path switch is invalid in phase {self.phase.value!r}")
        if self.phase is Phase.UPGRADING and path != "relay":
            self._fire(Event.UPGRADED)
        self.path = path

    def connection_closed(self) -> None:
        """The connection ended: back to punching (the pair may meet again)."""
        self._fire(Event.CONNECTION_CLOSED)
        self.path = None

    def close(self) -> list[Action]:
        """The owner forgets the pair."""
        actions: list[Action] = []
        if self.dial is not None:
            actions.append(Abandon(self.dial.attempt, "pair forgotten"))
            self.dial = None
        self._fire(Event.CLOSE)
        return actions

    # --- relay --------------------------------------------------------------------------------

    def relay_due(self, now: float, *, hopeless: bool, relay_after: float, retry: float, heard: bool) -> float:
        """When to ask the beacons for a relay: ``relay_after`` seconds after the introduction
        (at once if a direct path is ``hopeless``), ``retry`` seconds after the last request, and
        not while a dial that could still work is in flight."""
        due = self.introduced_at + (0.0 if hopeless else relay_after)
        if self.relay_requested_at is not None:
            due = max(due, self.relay_requested_at + retry)
        if now >= due and self.dial is not None and not self.silent_speculation(heard):
            return now + 0.1
        return due

    def relay_requested(self, now: float) -> None:
        self.relay_requested_at = now
