"""Hole punching towards one remote peer instance (sans-I/O: fed times and datagrams, returns sends).

Both peers probe every candidate at once when they learn of each other, then on a schedule (every
``fast_interval`` during the first second, every ``interval`` after) until ``duration`` ends.
A verified ping is answered with a pong to the address it *came from* (the only address a
symmetric NAT lets through), and that address becomes a candidate of its own (peer-reflexive).
A candidate is *confirmed* when a pong to one of our nonces comes back from it, or when a ping
arrives from it: either proves that the other side's NAT lets our packets in.

The session never decides to dial: the peer whose instance value is lower is the dialer
(:attr:`PunchSession.is_dialer`), so exactly one QUIC connection is made per pair.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from discretpeer.addresses import Addr
from discretpeer.candidates import is_lan_address
from discretpeer.proto.probe import NONCE_SIZE, Probe, ProbeKind, build_probe

MAX_CANDIDATES = 16
MAX_OUTSTANDING_NONCES = 64


IPV6_RTT_BONUS = 0.9  # an IPv6 path within 10 % of the best IPv4 round trip is preferred


class CandidateKind(enum.StrEnum):
    PUBLIC = "public"  # the address the beacon observed
    LOCAL = "local"  # an interface address the peer reported (or mDNS found)
    REFLEXIVE = "reflexive"  # the address a verified probe actually came from


@dataclass
class Candidate:
    address: Addr
    kind: CandidateKind
    added_at: float
    confirmed_at: float | None = None
    last_confirmed: float | None = None  # the latest proof that the path works
    rtt: float | None = None
    probes_sent: int = 0


@dataclass
class PunchStats:
    probes_sent: int = 0
    pings_received: int = 0
    pongs_received: int = 0
    rejected: int = 0


@dataclass
class PunchSession:
    token: bytes
    probe_key: bytes
    local_instance: bytes
    remote_instance: bytes
    started_at: float
    duration: float = 6.0
    fast_interval: float = 0.05
    interval: float = 0.1
    fast_period: float = 1.0
    candidates: OrderedDict[Addr, Candidate] = field(default_factory=OrderedDict)
    stats: PunchStats = field(default_factory=PunchStats)
    _nonces: OrderedDict[bytes, tuple[Addr, float]] = field(default_factory=OrderedDict)
    _next_round: float = 0.0

    @property
    def is_dialer(self) -> bool:
        return self.local_instance < self.remote_instance

    def active(self, now: float) -> bool:
        return now - self.started_at < self.duration

    def extend(
        self,
        now: float,
        duration: float | None = None,
        *,
        interval: float | None = None,
        fast_period: float | None = None,
    ) -> None:
        """Punch again for a while (a new introduction for the same pair, or slow background
        punching while a connection is relayed)."""
        self.started_at = now
        if duration is not None:
            self.duration = duration
        if interval is not None:
            self.interval = interval
        if fast_period is not None:
            self.fast_period = fast_period
        self._next_round = now

    # --- candidates ---------------------------------------------------------------------------

    def add_candidates(self, addresses: list[Addr], kind: CandidateKind, now: float) -> list[tuple[Addr, bytes]]:
        """Add candidates; new ones are probed at once (returned as sends)."""
        sends: list[tuple[Addr, bytes]] = []
        for address in addresses:
            existing = self.candidates.get(address)
            if existing is not None:
                # a probe may have shown us the address before an introduction said what it is
                if existing.kind is CandidateKind.REFLEXIVE and kind is not CandidateKind.REFLEXIVE:
                    existing.kind = kind
                continue
            if len(self.candidates) >= MAX_CANDIDATES:
                break
            candidate = Candidate(address=address, kind=kind, added_at=now)
            self.candidates[address] = candidate
            if self.active(now):
                sends.append(self._ping(candidate, now))
        return sends

    def confirmed(self) -> list[Candidate]:
        """Confirmed candidates, best first: LAN addresses, then by round-trip time, IPv6 counting
        10 % faster (so it wins a tie: no NAT on it, nothing to keep alive for a mapping)."""
        done = [c for c in self.candidates.values() if c.confirmed_at is not None]

        def key(c: Candidate) -> tuple[int, float, float]:
            lan = c.kind is CandidateKind.LOCAL and is_lan_address(c.address[0])
            rtt = c.rtt if c.rtt is not None else 1e9
            return (0 if lan else 1, rtt * (IPV6_RTT_BONUS if ":" in c.address[0] else 1.0), c.confirmed_at or 0.0)

        return sorted(done, key=key)

    # --- probes -------------------------------------------------------------------------------

    def _ping(self, candidate: Candidate, now: float) -> tuple[Addr, bytes]:
        nonce = os.urandom(NONCE_SIZE)
        self._nonces[nonce] = (candidate.address, now)
        while len(self._nonces) > MAX_OUTSTANDING_NONCES:
            self._nonces.popitem(last=False)
        candidate.probes_sent += 1
        self.stats.probes_sent += 1
        return candidate.address, build_probe(ProbeKind.PING, self.token, self.local_instance, nonce, self.probe_key)

    def start(self, now: float) -> list[tuple[Addr, bytes]]:
        self._next_round = now
        return self.poll(now)

    def poll(self, now: float) -> list[tuple[Addr, bytes]]:
        """Probes due now."""
        if not self.active(now):
            # over: no deadline until extend(). A poll that comes late (after the end, with the
            # next round still scheduled before it) used to leave that round in the past, and
            # next_deadline() returned it for ever: the punch loop spun (~400 turns a second,
            # for the connection's whole life, seen during the NAT-lab bulk transfers)
            self._next_round = float("inf")
            return []
        if now < self._next_round:
            return []
        sends = [self._ping(candidate, now) for candidate in self.candidates.values()]
        elapsed = now - self.started_at
        self._next_round = now + (self.fast_interval if elapsed < self.fast_period else self.interval)
        return sends

    def next_deadline(self) -> float | None:
        end = self.started_at + self.duration
        return self._next_round if self._next_round < end else None

    def on_probe(self, source: Addr, probe: Probe, now: float) -> list[tuple[Addr, bytes]]:
        """Handle a probe whose tag was verified with this meeting's key. Returns sends."""
        if probe.instance != self.remote_instance:
            self.stats.rejected += 1
            return []
        if probe.kind is ProbeKind.PING:
            self.stats.pings_received += 1
            candidate = self.candidates.get(source)
            if candidate is None and len(self.candidates) < MAX_CANDIDATES:
                candidate = Candidate(address=source, kind=CandidateKind.REFLEXIVE, added_at=now)
                self.candidates[source] = candidate
            if candidate is not None:
                candidate.last_confirmed = now
                if candidate.confirmed_at is None:
                    candidate.confirmed_at = now
            pong = build_probe(ProbeKind.PONG, self.token, self.local_instance, probe.nonce, self.probe_key)
            return [(source, pong)]
        # pong: must echo a nonce we sent; the round trip is measured against that ping
        sent = self._nonces.pop(probe.nonce, None)
        if sent is None:
            self.stats.rejected += 1
            return []
        self.stats.pongs_received += 1
        target, sent_at = sent
        candidate = self.candidates.get(source) or self.candidates.get(target)
        if candidate is None:
            return []
        rtt = now - sent_at
        if candidate.rtt is None or rtt < candidate.rtt:
            candidate.rtt = rtt
        candidate.last_confirmed = now
        if candidate.confirmed_at is None:
            candidate.confirmed_at = now
        return []


def mapping_varies(observed_by: dict[Addr, Addr]) -> bool | None:
    """From one host's public address as seen by several beacons (beacon address → observed
    address): True if it differs per destination (an endpoint-dependent, "symmetric" NAT, whose
    mapping towards a beacon says nothing about the one towards a peer), False if the same,
    None with fewer than two beacons at different IP addresses to compare."""
    by_ip: dict[str, Addr] = {}
    for beacon, observed in observed_by.items():
        by_ip.setdefault(beacon[0], observed)
    if len(by_ip) < 2:
        return None
    return len(set(by_ip.values())) > 1
