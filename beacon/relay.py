"""Relay sessions and quotas (sans-I/O).

Two peers that were introduced on a token each send ``RelayRequest{token, other's instance}`` on
their beacon connection. The server turns the instance (a value the client merely claims) into
the connection the beacon introduced to the requester on that token
(:meth:`beacon.meetings.MeetingTable.introduced`); a request that follows no introduction is
refused (``RELAY_NOT_INTRODUCED``). Requests pair by *connections*: when A asked for B and B for
A, a session with a random 8-byte id is bound to the two connections' validated addresses (an
address QUIC path validation proved receives, never one a packet merely came from) and both get
a grant. A third connection claiming B's instance pairs with nobody: A's request names B's
connection, not an instance value. When several connections introduced to A claim that instance,
A's request goes to the one introduced first: an impostor that arrives after B cannot take B's
place. What remains: one that claims B's instance *before* B announces (it must know B's random
instance already, from an earlier introduction, and win B's reconnection race) gets A's frames
but cannot decrypt or answer them (the peers authenticate each other end to end), so the harm is
a relay that fails, not a hijack; and a peer that reconnects while its old connection still
lingers at the beacon pairs once the old one is gone (the client closes it when it reconnects).
A session follows a side to a new address only once QUIC validated that path (NAT rebinding). Relay datagrams
(:mod:`discretpeer.proto.relay_frame`) are then forwarded unchanged to the other bound address, only
when they come from one of the two; the payload stays end-to-end encrypted.

The table is fed times and datagrams and returns decisions; the server does the sending.
:meth:`RelayTable.route` is the hot path: one dict lookup, a compare, a token bucket.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

from beacon.limits import TokenBucket
from discretpeer.addresses import Addr
from discretpeer.proto.relay_frame import MAX_RELAY_PAYLOAD, RELAY_DATA, RELAY_HEADER_SIZE
from discretpeer.proto.wire import RELAY_SESSION_ID_SIZE, ErrorCode

Key = Hashable


@dataclass(frozen=True)
class RelayQuota:
    enabled: bool = True
    max_sessions: int = 1000
    max_sessions_per_connection: int = 16
    max_bytes: int = 1 << 30
    max_seconds: int = 86400
    rate_bytes_per_second: int = 10_000_000
    burst_bytes: int = 1 << 20
    total_rate_bytes_per_second: int = 25_000_000  # all sessions together; 0 = no cap
    request_timeout: float = 30.0
    max_pending: int = 10000
    max_pending_per_connection: int = 16


def relay_quota(config: Any) -> RelayQuota:
    """The relay limits of a :class:`~beacon.config.BeaconConfig`."""
    c = config
    return RelayQuota(
        enabled=c.relay_enabled,
        max_sessions=c.relay_max_sessions,
        max_sessions_per_connection=c.relay_max_sessions_per_connection,
        max_bytes=c.relay_max_bytes,
        max_seconds=c.relay_max_seconds,
        rate_bytes_per_second=c.relay_rate_bytes_per_second,
        burst_bytes=c.relay_burst_bytes,
        total_rate_bytes_per_second=c.relay_total_rate_bytes_per_second,
        request_timeout=c.relay_request_timeout_seconds,
        max_pending=c.relay_max_pending_requests,
    )


class RelaySide:
    """One peer of a session: its beacon connection, the socket it talks to, its address."""

    __slots__ = ("conn", "instance", "via", "address", "bucket")

    def __init__(self, conn: Key, instance: bytes, via: Any, address: Addr, bucket: TokenBucket) -> None:
        self.conn = conn
        self.instance = instance
        self.via = via
        self.address = address
        self.bucket = bucket


class RelaySession:
    __slots__ = ("session_id", "token", "a", "b", "started", "expires", "bytes", "max_bytes", "datagrams")

    def __init__(self, session_id: bytes, token: bytes, a: RelaySide, b: RelaySide, now: float, quota: RelayQuota):
        self.session_id = session_id
        self.token = token
        self.a = a
        self.b = b
        self.started = now
        self.expires = now + quota.max_seconds
        self.bytes = 0
        self.max_bytes = quota.max_bytes
        self.datagrams = 0

    def sides(self) -> tuple[RelaySide, RelaySide]:
        return (self.a, self.b)

    def other(self, conn: Key) -> RelaySide:
        return self.b if self.a.conn == conn else self.a


class RelayEnded(NamedTuple):
    session: RelaySession
    code: ErrorCode
    message: str
    notify: tuple[RelaySide, ...]  # sides that must get RelayEnd


class Pending(NamedTuple):
    conn: Key
    token: bytes
    instance: bytes  # the requester's
    target: Key  # the connection it wants to reach (introduced to it on token)
    via: Any
    address: Addr
    deadline: float


class RequestOutcome(NamedTuple):
    """``session`` set: grant it to both sides. ``refused`` set: tell the requester. Else pending."""

    session: RelaySession | None = None
    refused: ErrorCode | None = None
    message: str = ""
    new: bool = True  # False: a repeated request for a live session (grant only the requester again)


def _sides(session: RelaySession, source: Addr, via: Any) -> tuple[RelaySide, RelaySide] | None:
    """(sender, receiver) of a datagram from ``source`` through ``via`` (None: any), or None
    when it is from neither side."""
    if source == session.a.address and (via is None or via is session.a.via):
        return session.a, session.b
    if source == session.b.address and (via is None or via is session.b.via):
        return session.b, session.a
    return None


class RelayTable:
    def __init__(self, quota: RelayQuota, random: Callable[[int], bytes] = os.urandom) -> None:
        self.quota = quota
        self._random = random
        self._sessions: dict[bytes, RelaySession] = {}
        self._by_pair: dict[tuple[bytes, frozenset[Key]], bytes] = {}  # (token, {conn, conn}) → id
        self._by_conn: dict[Key, set[bytes]] = {}
        self._pending: dict[tuple[bytes, Key, Key], Pending] = {}  # (token, from, to conn), oldest first
        self._pending_by_conn: dict[Key, int] = {}
        self.ended: list[RelayEnded] = []  # filled by route() and request(); the server drains it
        self.forwarded_bytes = 0
        self.forwarded_datagrams = 0
        self.forwarded_runs = 0  # of those, runs of datagrams forwarded in one send (route_run)
        self.sessions_started = 0
        self.dropped: dict[str, int] = {
            "not_relay": 0,
            "unknown_session": 0,
            "wrong_source": 0,
            "throttled": 0,
            "throttled_total": 0,
        }
        # set by route() when a datagram names a live session from an address of neither side:
        # the server may rebind a side that migrated there (validated path), then route again
        self.misdirected: RelaySession | None = None
        self._total: TokenBucket | None = None
        self.set_quota(quota)

    def set_quota(self, quota: RelayQuota) -> None:
        """New limits (a reload): for sessions granted from now on; the beacon-wide cap at once."""
        self.quota = quota
        total = quota.total_rate_bytes_per_second
        # the beacon-wide cap: one bucket for every session (burst: 100 ms of it, at least a datagram)
        self._total = TokenBucket(total, max(total / 10, 2 * MAX_RELAY_PAYLOAD), 0.0) if total > 0 else None

    # --- requests -----------------------------------------------------------------------------

    def request(
        self,
        conn: Key,
        instance: bytes,
        token: bytes,
        target: Key,
        target_instance: bytes,
        via: Any,
        address: Addr,
        now: float,
    ) -> RequestOutcome:
        """Record ``conn``'s request to reach connection ``target`` (which the beacon introduced
        to it on ``token``, claiming ``target_instance``); grant when ``target``'s mirror request
        is waiting. ``address`` is ``conn``'s validated address."""
        quota = self.quota
        if not quota.enabled:
            return RequestOutcome(refused=ErrorCode.RELAY_REFUSED, message="relay is disabled on this beacon")
        if target == conn or target_instance == instance:
            return RequestOutcome(refused=ErrorCode.RELAY_REFUSED, message="cannot relay to yourself")
        pair = (token, frozenset((conn, target)))
        existing = self._sessions.get(self._by_pair.get(pair, b""))
        if existing is not None:
            return RequestOutcome(session=existing, new=False)
        self.expire_pending(now)
        mirror = self._pending.get((token, target, conn))
        if mirror is None:
            return self._wait(conn, instance, token, target, via, address, now)
        for side in (conn, mirror.conn):
            if len(self._by_conn.get(side, ())) >= quota.max_sessions_per_connection:
                return RequestOutcome(
                    refused=ErrorCode.RELAY_TOO_MANY_SESSIONS, message="too many relay sessions on one connection"
                )
        if len(self._sessions) >= quota.max_sessions:
            return RequestOutcome(refused=ErrorCode.RELAY_TOO_MANY_SESSIONS, message="relay is full")
        self._unpend((token, target, conn))
        session_id = self._random(RELAY_SESSION_ID_SIZE)
        while session_id in self._sessions:
            session_id = self._random(RELAY_SESSION_ID_SIZE)
        rate, burst = quota.rate_bytes_per_second, quota.burst_bytes
        session = RelaySession(
            session_id,
            token,
            RelaySide(mirror.conn, mirror.instance, mirror.via, mirror.address, TokenBucket(rate, burst, now)),
            RelaySide(conn, instance, via, address, TokenBucket(rate, burst, now)),
            now,
            quota,
        )
        self._sessions[session_id] = session
        self._by_pair[pair] = session_id
        for side in (session.a, session.b):
            self._by_conn.setdefault(side.conn, set()).add(session_id)
        self.sessions_started += 1
        return RequestOutcome(session=session)

    def _wait(
        self, conn: Key, instance: bytes, token: bytes, target: Key, via: Any, address: Addr, now: float
    ) -> RequestOutcome:
        key = (token, conn, target)
        refreshed = key in self._pending
        if refreshed:
            self._unpend(key)  # refreshed: moves to the back with a new deadline
        elif self._pending_by_conn.get(conn, 0) >= self.quota.max_pending_per_connection:
            return RequestOutcome(refused=ErrorCode.RELAY_REFUSED, message="too many pending relay requests")
        elif len(self._pending) >= self.quota.max_pending:
            return RequestOutcome(refused=ErrorCode.RELAY_TOO_MANY_SESSIONS, message="too many pending relay requests")
        self._pending[key] = Pending(conn, token, instance, target, via, address, now + self.quota.request_timeout)
        self._pending_by_conn[conn] = self._pending_by_conn.get(conn, 0) + 1
        return RequestOutcome(new=not refreshed)  # new=False: a pending request repeated

    def _unpend(self, key: tuple[bytes, Key, Key]) -> Pending | None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            count = self._pending_by_conn[pending.conn] - 1
            if count:
                self._pending_by_conn[pending.conn] = count
            else:
                del self._pending_by_conn[pending.conn]
        return pending

    def expire_pending(self, now: float) -> list[Pending]:
        """Drop requests past their deadline (the dict is in deadline order)."""
        expired: list[Pending] = []
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            self._unpend(key)
            expired.append(pending)
        return expired

    # --- forwarding ---------------------------------------------------------------------------

    def route(self, data: bytes, source: Addr, now: float, via: Any = None) -> tuple[Any, Addr] | None:
        """Where to send this datagram unchanged (``(via, address)``), or None to drop it.
        ``via``: what it came through (a UDP socket or a TCP connection); when given, it must
        be the side's, so a UDP datagram claiming a TCP side's address is not that side.

        Sessions ended by a quota are appended to :attr:`ended`."""
        if len(data) <= RELAY_HEADER_SIZE or data[0] != RELAY_DATA or len(data) > RELAY_HEADER_SIZE + MAX_RELAY_PAYLOAD:
            self.dropped["not_relay"] += 1
            return None
        session = self._sessions.get(data[1:RELAY_HEADER_SIZE])
        if session is None:
            self.dropped["unknown_session"] += 1
            return None
        sides = _sides(session, source, via)
        if sides is None:
            self.dropped["wrong_source"] += 1
            self.misdirected = session
            return None
        sender, receiver = sides
        if now >= session.expires:
            self.ended.append(self._end(session, ErrorCode.RELAY_DURATION_EXCEEDED, "relay duration exceeded"))
            return None
        size = len(data)
        if session.bytes + size > session.max_bytes:
            self.ended.append(self._end(session, ErrorCode.RELAY_BYTES_EXCEEDED, "relay byte quota exceeded"))
            return None
        if not sender.bucket.take(now, size):
            self.dropped["throttled"] += 1
            return None
        total = self._total
        if total is not None and not total.take(now, size):
            sender.bucket.tokens += size  # (not the session's fault: give back what it spent)
            self.dropped["throttled_total"] += 1
            return None
        session.bytes += size
        session.datagrams += 1
        self.forwarded_bytes += size
        self.forwarded_datagrams += 1
        return receiver.via, receiver.address

    def route_run(
        self, data: bytes, segment: int, source: Addr, now: float, via: Any = None
    ) -> tuple[Any, Addr] | None:
        """Where to send a run of datagrams that arrived as one read (UDP GRO: ``segment`` bytes
        each, the last may be shorter), all at once; None: route them one by one instead
        (nothing was counted or spent). Only a run that :meth:`route` would forward datagram by
        datagram to the same place, every one of them, goes at once: the same session header in
        each, from the side's address, within its sizes, quotas and rate."""
        size = len(data)
        if segment <= RELAY_HEADER_SIZE or segment > RELAY_HEADER_SIZE + MAX_RELAY_PAYLOAD or size <= segment:
            return None
        if size % segment and size % segment <= RELAY_HEADER_SIZE:
            return None  # the last one is no relay frame
        header = data[:RELAY_HEADER_SIZE]
        if header[0] != RELAY_DATA:
            return None
        for offset in range(segment, size, segment):
            if data[offset : offset + RELAY_HEADER_SIZE] != header:
                return None
        session = self._sessions.get(header[1:])
        if session is None:
            return None
        sides = _sides(session, source, via)
        if sides is None:
            return None
        sender, receiver = sides
        if now >= session.expires or session.bytes + size > session.max_bytes:
            return None  # one by one: the session ends where it would have
        if not sender.bucket.take(now, size):
            return None  # one by one: as many as the bucket allows go
        total = self._total
        if total is not None and not total.take(now, size):
            sender.bucket.tokens += size
            return None
        count = -(-size // segment)
        session.bytes += size
        session.datagrams += count
        self.forwarded_bytes += size
        self.forwarded_datagrams += count
        self.forwarded_runs += 1
        return receiver.via, receiver.address

    def session(self, session_id: bytes) -> RelaySession | None:
        return self._sessions.get(session_id)

    def rebind(self, session: RelaySession, conn: Key, address: Addr) -> None:
        """``conn``'s connection migrated to ``address`` and QUIC validated that path: its side of
        the session follows (the server checks the validation; nothing else moves a side)."""
        for side in session.sides():
            if side.conn == conn:
                side.address = address

    # --- endings ------------------------------------------------------------------------------

    def expire(self, now: float) -> list[RelayEnded]:
        """End sessions past their lifetime."""
        return [
            self._end(s, ErrorCode.RELAY_DURATION_EXCEEDED, "relay duration exceeded")
            for s in list(self._sessions.values())
            if now >= s.expires
        ]

    def end_by(self, conn: Key, session_id: bytes) -> RelayEnded | None:
        """A peer ended its session: the other one is told."""
        session = self._sessions.get(session_id)
        if session is None or conn not in (session.a.conn, session.b.conn):
            return None
        ended = self._end(session, ErrorCode.RELAY_PEER_GONE, "the other peer ended the relay session")
        return ended._replace(notify=(session.other(conn),))

    def drop_connection(self, conn: Key) -> list[RelayEnded]:
        """A beacon connection went: its pending requests vanish, its sessions end (other side told)."""
        if conn in self._pending_by_conn:
            for key in [k for k, p in self._pending.items() if p.conn == conn]:
                self._unpend(key)
        endings = []
        for session_id in list(self._by_conn.get(conn, ())):
            session = self._sessions[session_id]
            ended = self._end(session, ErrorCode.RELAY_PEER_GONE, "the other peer left the beacon")
            endings.append(ended._replace(notify=(session.other(conn),)))
        return endings

    def _end(self, session: RelaySession, code: ErrorCode, message: str, notify: bool = True) -> RelayEnded:
        self._sessions.pop(session.session_id, None)
        pair = (session.token, frozenset((session.a.conn, session.b.conn)))
        if self._by_pair.get(pair) == session.session_id:
            del self._by_pair[pair]
        for side in session.sides():
            ids = self._by_conn.get(side.conn)
            if ids is not None:
                ids.discard(session.session_id)
                if not ids:
                    del self._by_conn[side.conn]
        return RelayEnded(session, code, message, session.sides() if notify else ())

    # --- inspection ---------------------------------------------------------------------------

    def get(self, session_id: bytes) -> RelaySession | None:
        return self._sessions.get(session_id)

    def sessions_of(self, conn: Key) -> list[RelaySession]:
        return [self._sessions[i] for i in self._by_conn.get(conn, ())]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def pending_count(self) -> int:
        return len(self._pending)
