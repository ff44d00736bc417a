"""``Peer``: the application's handle. One UDP socket, its beacons, its meetings, its connections.

    async with Peer(identity, beacons=[...]) as peer:
        conn = await peer.connect("our shared secret", expect=other_peer_id, timeout=10)
        reader, writer = await conn.open_stream()

How a meeting becomes a connection: the meeting's tokens are announced to every beacon (and on the
LAN); an introduction (or a verified probe from the other side, or an mDNS sighting) starts a
:class:`~discretpeer.traversal.PunchSession`; the peer with the lower instance value dials the
first confirmed candidate; both sides prove their identity on the new QUIC connection; the
verified connection goes to a waiting ``connect()`` or to ``incoming()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from discretpeer.logs import get_logger
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from certs import create_bundle
from discretpeer.auth import AuthError, Expectation, PeerPolicy
from discretpeer.beacon_client import BeaconClient, BeaconStatus
from discretpeer.candidates import attached_networks, local_candidates, on_attached_network
from discretpeer.config import BeaconSpec, parse_beacons
from discretpeer.connection import (
    PathKind,
    PeerConnection,
    PeerProtocol,
    authenticate_as_dialer,
    authenticate_as_listener,
)
from discretpeer.endpoint import Admission, Endpoint
from discretpeer.errors import ConnectError
from discretpeer.flow import CONNECTION_WINDOW, STREAM_WINDOW, AppPacedQuicConnection
from discretpeer.path_mtu import AIOQUIC_MAX_DATAGRAM, BASE_DATAGRAM, SizedQuicConfiguration, check_max_datagram_size
from discretpeer.identity import Identity
from discretpeer.paths import RelayLink, Route, is_virtual
from discretpeer.probe import ProbeError, ProbeKind, parse_probe
from discretpeer.relay_frame import RELAY_DATA, RelayFrameError, parse_relay_frame
from discretpeer.tokens import DEFAULT_ROTATION_SECONDS, MeetingKeys, pair_meeting
from discretpeer.traversal import Addr, Candidate, CandidateKind, PunchSession, mapping_varies
from discretpeer.wire import (
    INSTANCE_SIZE,
    PEER_ALPN,
    Address,
    ErrorCode,
    Introduction,
    Message,
    RelayEnd,
    RelayGrant,
    RelayRequest,
)

log = get_logger("discretpeer.peer")

MAX_SESSIONS = 256
MAX_PENDING_INCOMING = 32
MAX_INCOMING_BACKLOG = 64
DIAL_TIMEOUT = 3.0
SESSION_LINGER = 30.0
TOKEN_REFRESH_INTERVAL = 60.0
CANDIDATE_REFRESH_INTERVAL = 60.0
BACKGROUND_PUNCH_INTERVAL = 1.0  # while relayed, keep looking for a direct path
RELAY_REQUEST_RETRY = 5.0
MAX_RELAY_ROUTES = 64
MAX_OBSERVATIONS = 8  # beacons whose view of a peer's address we keep per pair


@dataclass
class PeerStats:
    """Counters of what happened, for apps, the CLI's ``status`` and the benchmarks."""

    introductions: int = 0
    lan_sightings: int = 0
    punch_sessions: int = 0
    punches_confirmed: int = 0
    probes_sent: int = 0
    probes_received: int = 0
    probes_rejected: int = 0
    dials: int = 0
    dial_failures: int = 0
    relay_requests: int = 0
    relay_grants: int = 0
    relay_ends: int = 0
    path_switches: int = 0
    incoming_attempts: int = 0
    verified: int = 0
    auth_failures: int = 0
    connect_times: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))


@dataclass
class _Meeting:
    keys: MeetingKeys
    policy: PeerPolicy
    tokens: tuple[bytes, ...]
    listening: bool = False
    waiters: list[asyncio.Future[PeerConnection]] = field(default_factory=list)
    introductions: int = 0
    failures: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=8))
    refusals: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=4))  # TOKEN_FULL

    @property
    def id(self) -> bytes:
        return self.keys.meeting

    @property
    def wanted(self) -> bool:
        return self.listening or bool(self.waiters)


def _peer_quic_configuration(*, is_client: bool, max_datagram_size: int = AIOQUIC_MAX_DATAGRAM) -> QuicConfiguration:
    """Both ends of a peer connection: 1350-byte datagrams until a path-MTU probe confirms more
    (never more than ``max_datagram_size``), receive windows of discretpeer.flow. A dialer checks
    no certificate: identity is proven by signatures bound to the connection (discretpeer.auth)."""
    return SizedQuicConfiguration(
        is_client=is_client,
        alpn_protocols=[PEER_ALPN],
        verify_mode=ssl.CERT_NONE if is_client else None,
        idle_timeout=30.0,
        max_datagram_size=min(BASE_DATAGRAM, max_datagram_size),
        datagram_size_cap=max_datagram_size,
        max_data=CONNECTION_WINDOW,
        max_stream_data=STREAM_WINDOW,
    )


@dataclass
class _Pair:
    """A punch session plus what was done with it."""

    meeting: _Meeting
    session: PunchSession
    introduced_at: float
    via: str
    dialing: bool = False
    failed: set[Addr] = field(default_factory=set)
    connection: PeerConnection | None = None
    clients: list[BeaconClient] = field(default_factory=list)  # beacons that introduced us
    relay_requested_at: float | None = None
    relay_route: Route | None = None
    dial_task: asyncio.Task[None] | None = None
    dial_protocol: PeerProtocol | None = None
    dial_speculative: bool = False
    dial_target: Addr | None = None
    dial_started: float = 0.0
    speculation_watch: asyncio.TimerHandle | None = None
    speculated: bool = False  # one speculative dial per attempt
    rebind: Addr | None = None  # a new address the peer's packets came from, being probed
    # the peer's public address as each beacon that introduced it saw it (beacon -> observed)
    observed_by: dict[Addr, Addr] = field(default_factory=dict)
    # more relay sessions granted for this pair (several beacons): session id -> beacon. We send
    # through relay_route's; the other peer may have picked another one: accept its frames too
    relay_aliases: dict[bytes, Addr] = field(default_factory=dict)


class Peer:
    """A peer: owns one UDP socket for beacons, probes and every peer connection.

    ``beacons``: a list of :class:`BeaconSpec` or ``{"hostname": "host:port", "cert_hash": "..."}``.
    ``lan``: discover peers on the local network by mDNS (no beacon needed).
    ``relay``: fall back to relaying through a beacon when no direct path is verified within
    ``relay_after`` seconds. ``direct=False`` never punches (relay only: the other peer then never
    sees packets from our address). ``max_datagram_size``: the largest UDP payload this peer sends
    (1200..16000; path-MTU probing never goes above it), e.g. 1472 to stay within one Ethernet frame.
    """

    def __init__(
        self,
        identity: Identity,
        beacons: Iterable[Any] = (),
        *,
        host: str | None = None,
        port: int = 0,
        lan: bool = False,
        lan_interfaces: list[str] | None = None,
        rotation_seconds: int | None = DEFAULT_ROTATION_SECONDS,
        punch_duration: float = 6.0,
        report_local_candidates: bool = True,
        relay: bool = True,
        relay_after: float = 1.5,
        direct: bool = True,
        max_datagram_size: int = AIOQUIC_MAX_DATAGRAM,
    ) -> None:
        self.identity = identity
        self._max_datagram_size = check_max_datagram_size(max_datagram_size)
        self.beacons: list[BeaconSpec] = parse_beacons(list(beacons))
        self.instance = os.urandom(INSTANCE_SIZE)
        self.stats = PeerStats()
        self._host = host
        self._port = port
        self._lan_enabled = lan
        self._lan_interfaces = lan_interfaces
        self._rotation = rotation_seconds
        self._punch_duration = punch_duration
        self._report_local = report_local_candidates
        self._relay_enabled = relay
        self._direct_enabled = direct
        self._relay_after = relay_after
        self._relay_routes: dict[bytes, tuple[Route, _Pair]] = {}
        self._relay_aliases: dict[bytes, _Pair] = {}
        self._pair_by_protocol: dict[PeerProtocol, _Pair] = {}
        self._endpoint: Endpoint | None = None
        self._clients: list[BeaconClient] = []
        self._meetings: dict[bytes, _Meeting] = {}
        self._by_token: dict[bytes, _Meeting] = {}
        self._pairs: collections.OrderedDict[tuple[bytes, bytes], _Pair] = collections.OrderedDict()
        self._connections: set[PeerConnection] = set()
        self._incoming: asyncio.Queue[PeerConnection] = asyncio.Queue(MAX_INCOMING_BACKLOG)
        self._pending_incoming = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._candidates: list[Address] = []
        self._networks: list[Any] = []
        self._lan: Any = None
        self._closed = False
        self._started = False
        bundle = create_bundle("discretpeer", private_key=identity.private_key)
        self._server_config = _peer_quic_configuration(is_client=False, max_datagram_size=max_datagram_size)
        self._server_config.certificate = bundle.certificate
        self._server_config.private_key = bundle.private_key

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> Peer:
        if self._started:
            return self
        self._started = True
        self._endpoint = await Endpoint.open(
            self._host,
            self._port,
            server_configuration=self._server_config,
            create_server_protocol=self._new_incoming,
            admit=self._admit,
            on_datagram=self._on_datagram,
            virtual_paths=True,
            on_unexpected_source=self._on_unexpected_source,
            connection_class=AppPacedQuicConnection,
        )
        self._candidates = self._compute_candidates()
        self._networks = attached_networks()
        for spec in self.beacons:
            client = BeaconClient(
                spec,
                self._endpoint,
                self.instance,
                on_introduction=self._on_beacon_introduction,
                get_candidates=lambda: list(self._candidates),
                on_relay_message=self._on_relay_message,
                on_disconnect=self._on_beacon_lost,
                on_token_full=self._on_token_full,
            )
            self._clients.append(client)
            client.start()
        if self._lan_enabled:
            await self._start_lan()
        self._spawn(self._punch_loop(), "punch loop")
        self._spawn(self._maintenance_loop(), "maintenance")
        log.info("peer started", peer_id=self.peer_id, port=self.port, beacons=[str(b) for b in self.beacons])
        return self

    async def close(self) -> None:
        """Close every connection, the beacon connections, mDNS and the socket."""
        if self._closed:
            return
        self._closed = True
        for meeting in self._meetings.values():
            for waiter in meeting.waiters:
                if not waiter.done():
                    waiter.set_exception(ConnectionError("peer closed"))
        # what the app wrote gets delivered (bounded wait), then every connection closes
        await asyncio.gather(
            *(connection.aclose("peer closing", timeout=2.0) for connection in list(self._connections)),
            return_exceptions=True,
        )
        if self._lan is not None:
            with contextlib.suppress(Exception):
                await self._lan.close()
        await asyncio.gather(*(client.close() for client in self._clients), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._endpoint is not None:
            self._endpoint.close()
            await asyncio.sleep(0)  # let the transport close

    async def __aenter__(self) -> Peer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- public API ---------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def port(self) -> int:
        assert self._endpoint is not None, "peer not started"
        return self._endpoint.port

    @property
    def beacon_status(self) -> list[BeaconStatus]:
        return [client.status for client in self._clients]

    @property
    def connections(self) -> list[PeerConnection]:
        return [c for c in self._connections if not c.closed]

    async def wait_beacons(self, timeout: float = 5.0, *, count: int = 1) -> int:
        """Wait until ``count`` beacons (default: one) are connected; returns how many are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            connected = sum(1 for client in self._clients if client.connected)
            if connected >= min(count, len(self._clients)):
                return connected
            await asyncio.sleep(0.02)
        return sum(1 for client in self._clients if client.connected)

    async def connect(
        self, meeting: str | bytes, *, expect: Expectation, timeout: float = 10.0
    ) -> PeerConnection:
        """Meet the peer(s) sharing ``meeting`` and return the first verified connection.

        ``expect``: a peer id, a set of peer ids, a callback ``(peer_id) -> bool``, or ``None``
        for any peer that knows the meeting. Raises :class:`ConnectError` on timeout, saying what
        was tried.
        """
        self._check_open()
        record = self._register(meeting, PeerPolicy(expect))
        waiter: asyncio.Future[PeerConnection] = asyncio.get_running_loop().create_future()
        record.waiters.append(waiter)
        self._sync_tokens()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return waiter.result()  # verified in the same instant the timer fired
            raise ConnectError(self._failure_text(record, timeout), self._report(record)) from None
        finally:
            if waiter in record.waiters:
                record.waiters.remove(waiter)
            if not waiter.done():
                waiter.cancel()
            self._unregister_if_idle(record)

    async def connect_to_peer(self, peer_id: str, *, timeout: float = 10.0) -> PeerConnection:
        """Meet a known peer by its id alone (the meeting is derived from both ids)."""
        return await self.connect(pair_meeting(self.peer_id, peer_id), expect=peer_id, timeout=timeout)

    async def listen(self, meeting: str | bytes, *, expect: Expectation) -> None:
        """Wait on ``meeting`` until :meth:`unlisten`; verified connections arrive in :meth:`incoming`."""
        self._check_open()
        record = self._register(meeting, PeerPolicy(expect))
        record.listening = True
        self._sync_tokens()

    async def listen_for_peers(self, peer_ids: Iterable[str]) -> None:
        """Listen on the pair meeting of each known peer id (what ``connect_to_peer`` dials)."""
        for peer_id in peer_ids:
            await self.listen(pair_meeting(self.peer_id, peer_id), expect=peer_id)

    async def unlisten(self, meeting: str | bytes) -> None:
        keys = MeetingKeys.derive(meeting, self._rotation)
        record = self._meetings.get(keys.meeting)
        if record is not None:
            record.listening = False
            self._unregister_if_idle(record)

    async def incoming(self) -> AsyncIterator[PeerConnection]:
        """Verified connections from peers meeting us on a meeting we :meth:`listen` on."""
        while not self._closed:
            yield await self._incoming.get()

    # --- meetings and tokens ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionError("peer is closed")
        if not self._started:
            raise RuntimeError("peer not started: use 'async with Peer(...)' or 'await peer.start()'")

    def _register(self, meeting: str | bytes, policy: PeerPolicy) -> _Meeting:
        keys = MeetingKeys.derive(meeting, self._rotation)
        record = self._meetings.get(keys.meeting)
        if record is None:
            record = _Meeting(keys=keys, policy=policy, tokens=keys.tokens())
            self._meetings[keys.meeting] = record
            for token in record.tokens:
                self._by_token[token] = record
        else:
            record.policy = policy
        return record

    def _unregister_if_idle(self, record: _Meeting) -> None:
        """Withdraw a meeting nobody waits on; forget it once none of its connections is alive
        (until then its probes still count: background punching, NAT rebinding)."""
        if record.wanted or self._closed:
            return
        self._sync_tokens()
        if any(
            pair.meeting is record and pair.connection is not None and not pair.connection.closed
            for pair in self._pairs.values()
        ):
            return
        self._meetings.pop(record.id, None)
        for token in record.tokens:
            if self._by_token.get(token) is record:
                del self._by_token[token]
        self._sync_tokens()

    def _sync_tokens(self) -> None:
        tokens = {token for token, record in self._by_token.items() if record.wanted}
        for client in self._clients:
            client.set_tokens(tokens)
        if self._lan is not None:
            self._spawn(self._lan.set_tokens(tokens), "lan tokens")

    def _refresh_tokens(self) -> None:
        changed = False
        for record in self._meetings.values():
            tokens = record.keys.tokens()
            if tokens != record.tokens:
                for token in record.tokens:
                    if self._by_token.get(token) is record:
                        del self._by_token[token]
                record.tokens = tokens
                for token in tokens:
                    self._by_token[token] = record
                changed = True
        if changed:
            self._sync_tokens()

    def _policy_for_token(self, token: bytes) -> PeerPolicy | None:
        record = self._by_token.get(token)
        return record.policy if record is not None else None

    # --- introductions and probes -------------------------------------------------------------

    def _on_beacon_introduction(self, client: BeaconClient, intro: Introduction) -> None:
        self.stats.introductions += 1
        pair = self._introduce(
            intro.token,
            intro.instance,
            public=[intro.observed.to_socket()],
            local=[c.to_socket() for c in intro.candidates],
            via=f"beacon {client.spec}",
        )
        if pair is not None and client not in pair.clients:
            pair.clients.append(client)
            if pair.relay_requested_at is not None and self._relay_enabled:
                # relaying already: a spare session on this beacon too (the other peer asks it
                # as well), so a relayed connection can move here if its beacon goes
                if client.send(RelayRequest(token=pair.session.token, instance=pair.session.remote_instance)):
                    self.stats.relay_requests += 1
        beacon = client.beacon_address
        if pair is not None and beacon is not None and len(pair.observed_by) < MAX_OBSERVATIONS:
            pair.observed_by[beacon] = intro.observed.to_socket()
            if self._direct_hopeless(pair):
                self._wake.set()  # the relay is due now

    def _introduce(
        self, token: bytes, instance: bytes, *, public: list[Addr], local: list[Addr], via: str
    ) -> _Pair | None:
        record = self._by_token.get(token)
        if record is None or instance == self.instance or len(instance) != INSTANCE_SIZE:
            return None
        record.introductions += 1
        now = time.monotonic()
        pair = self._pair(record, token, instance, now, via)
        if pair is None:
            return None
        sends = pair.session.add_candidates(self._usable(local), CandidateKind.LOCAL, now)
        sends += pair.session.add_candidates(self._usable(public), CandidateKind.PUBLIC, now)
        if not pair.session.active(now) and pair.connection is None:
            # a new attempt for a pair we knew: punch afresh (old confirmations may be stale: the
            # NATs may have changed), relay afresh
            pair.session.extend(now, self._punch_duration, interval=0.1, fast_period=1.0)
            for candidate in pair.session.candidates.values():
                candidate.confirmed_at = candidate.last_confirmed = None
            pair.failed.clear()
            pair.introduced_at = now
            pair.relay_requested_at = None
            pair.speculated = False
        self._send_all(sends)
        self._wake.set()
        self._maybe_dial(pair)
        self._dial_speculatively(pair)
        return pair

    def _usable(self, addresses: list[Addr]) -> list[Addr]:
        ipv6 = self._endpoint is not None and ":" in self._endpoint.local_address[0]
        own = {(a.host, a.port) for a in self._candidates}
        return [a for a in addresses if (ipv6 or ":" not in a[0]) and a not in own]

    def _pair(self, record: _Meeting, token: bytes, instance: bytes, now: float, via: str) -> _Pair | None:
        key = (record.id, instance)
        pair = self._pairs.get(key)
        if pair is not None:
            self._pairs.move_to_end(key)
            pair.meeting = record  # the meeting may have been withdrawn and registered again
            if pair.connection is not None and pair.connection.closed:
                pair.connection = None
            return pair
        if len(self._pairs) >= MAX_SESSIONS:
            # evict the oldest pair that is neither connected nor dialing
            for old_key, old in self._pairs.items():
                if old.connection is None and not old.dialing:
                    del self._pairs[old_key]
                    break
            else:
                return None
        session = PunchSession(
            token=token,
            probe_key=record.keys.probe_key,
            local_instance=self.instance,
            remote_instance=instance,
            started_at=now,
            duration=self._punch_duration,
        )
        session.start(now)
        pair = _Pair(meeting=record, session=session, introduced_at=now, via=via)
        self._pairs[key] = pair
        self.stats.punch_sessions += 1
        return pair

    def _on_datagram(self, data: bytes, source: Addr) -> None:
        if data[0] == RELAY_DATA:
            self._on_relay_frame(data, source)
            return
        if not self._direct_enabled:
            return
        try:
            probe = parse_probe(data)
        except ProbeError:
            self.stats.probes_rejected += 1
            return
        record = self._by_token.get(probe.token)
        if record is None or probe.instance == self.instance or not probe.verify(record.keys.probe_key):
            self.stats.probes_rejected += 1
            return
        self.stats.probes_received += 1
        now = time.monotonic()
        key = (record.id, probe.instance)
        pair = self._pairs.get(key)
        if pair is None:
            if probe.kind is not ProbeKind.PING:
                return
            # a probe before our own introduction: keep it, answer it, count it as one
            pair = self._pair(record, probe.token, probe.instance, now, "probe")
            if pair is None:
                return
        before = {c.address for c in pair.session.confirmed()}
        self._send_all(pair.session.on_probe(source, probe, now))
        if {c.address for c in pair.session.confirmed()} - before:
            self.stats.punches_confirmed += 1
        if pair.connection is not None:
            self._consider_switch(pair)
        self._maybe_dial(pair)

    def _send_all(self, sends: list[tuple[Addr, bytes]]) -> None:
        endpoint = self._endpoint
        if endpoint is None or not self._direct_enabled:
            return
        for address, data in sends:
            endpoint.sendto(data, address)
            self.stats.probes_sent += 1

    async def _punch_loop(self) -> None:
        while True:
            now = time.monotonic()
            deadline: float | None = None
            for key, pair in list(self._pairs.items()):
                relay_at = self._relay_housekeeping(pair, now)
                if relay_at is not None:
                    deadline = relay_at if deadline is None else min(deadline, relay_at)
                self._send_all(pair.session.poll(now))
                next_at = pair.session.next_deadline()
                if next_at is not None:
                    deadline = next_at if deadline is None else min(deadline, next_at)
                elif (
                    pair.connection is None
                    and pair.relay_route is None
                    and not pair.dialing
                    and now - pair.session.started_at > pair.session.duration + SESSION_LINGER
                ):
                    del self._pairs[key]
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _maintenance_loop(self) -> None:
        last_candidates = time.monotonic()
        while True:
            await asyncio.sleep(TOKEN_REFRESH_INTERVAL)
            self._refresh_tokens()
            if time.monotonic() - last_candidates >= CANDIDATE_REFRESH_INTERVAL:
                last_candidates = time.monotonic()
                self._networks = attached_networks()
                fresh = self._compute_candidates()
                if fresh != self._candidates:
                    self._candidates = fresh
                    for client in self._clients:
                        client.refresh_candidates()

    def _compute_candidates(self) -> list[Address]:
        if not self._report_local or self._endpoint is None:
            return []
        ipv6 = ":" in self._endpoint.local_address[0]
        host = self._endpoint.local_address[0]
        if host not in ("::", "0.0.0.0"):
            return [Address.from_socket((host, self._endpoint.port))] if not host.startswith("127.") else []
        return local_candidates(self._endpoint.port, ipv6=ipv6)

    # --- dialing ------------------------------------------------------------------------------

    def _maybe_dial(self, pair: _Pair) -> None:
        if not pair.session.is_dialer or self._closed:
            return
        if pair.connection is not None and not pair.connection.closed:
            return
        if not pair.meeting.wanted:
            return
        candidates = [c for c in pair.session.confirmed() if c.address not in pair.failed]
        relay = pair.relay_route is not None and pair.relay_route.virtual not in pair.failed
        if pair.dialing:
            # a speculative dial that has heard nothing gives way to a confirmed path...
            if not (self._dial_is_silent_speculation(pair) and (candidates or relay)):
                return
            if candidates and candidates[0].address == pair.dial_target:
                # ...but when it aims at that very address its answer is simply on the way (the
                # probe came in half a round trip, the QUIC answer needs a whole one): wait a bit
                if pair.speculation_watch is None:
                    grace = 2 * (time.monotonic() - pair.dial_started) + 0.05
                    pair.speculation_watch = asyncio.get_running_loop().call_later(
                        grace, self._speculation_timeout, pair
                    )
                return
            self._abandon_dial(pair)
        if candidates:
            self._start_dial(pair, candidates[0])
        elif relay:
            self._start_dial(pair, None)

    def _dial_speculatively(self, pair: _Pair) -> None:
        """Dial the observed public address at once, while probes are still on their way: when
        both NATs open at the same moment (both peers got the introduction together) this saves
        the wait for the first probe, half a round trip. It gives way to any confirmed path."""
        if (
            not pair.session.is_dialer
            or pair.dialing
            or pair.speculated
            or not self._direct_enabled
            or not pair.meeting.wanted
            or (pair.connection is not None and not pair.connection.closed)
        ):
            return
        public = [
            c
            for c in pair.session.candidates.values()
            if c.kind is CandidateKind.PUBLIC and c.address not in pair.failed
        ]
        if public:
            pair.speculated = True
            self._start_dial(pair, public[0], speculative=True)

    def _speculation_timeout(self, pair: _Pair) -> None:
        pair.speculation_watch = None
        if pair.dialing and self._dial_is_silent_speculation(pair):
            self._abandon_dial(pair)  # its Initial was lost (the other NAT was not open yet)
            self._maybe_dial(pair)

    def _dial_is_silent_speculation(self, pair: _Pair) -> bool:
        protocol = pair.dial_protocol
        return pair.dial_speculative and (protocol is None or protocol.last_received == 0)

    def _start_dial(self, pair: _Pair, candidate: Candidate | None, *, speculative: bool = False) -> None:
        pair.dialing = True
        pair.dial_speculative = speculative
        pair.dial_protocol = None
        pair.dial_target = None if candidate is None else candidate.address
        pair.dial_started = time.monotonic()
        name = "dial via relay" if candidate is None else "dial"
        pair.dial_task = self._spawn(self._dial(pair, candidate, speculative), name)

    def _abandon_dial(self, pair: _Pair) -> None:
        task, protocol = pair.dial_task, pair.dial_protocol
        if pair.speculation_watch is not None:
            pair.speculation_watch.cancel()
            pair.speculation_watch = None
        pair.dialing = pair.dial_speculative = False
        pair.dial_task = pair.dial_protocol = None
        if task is not None:
            task.cancel()
        if protocol is not None:
            protocol.close_with("superseded by a confirmed path")

    async def _dial(self, pair: _Pair, candidate: Candidate | None, speculative: bool = False) -> None:
        """Dial a confirmed candidate, or through the pair's relay route when ``candidate`` is None."""
        assert self._endpoint is not None
        self.stats.dials += 1
        record = pair.meeting
        configuration = _peer_quic_configuration(is_client=True, max_datagram_size=self._max_datagram_size)
        protocol: PeerProtocol | None = None
        route = pair.relay_route if candidate is None else None
        target = candidate.address if candidate is not None else route.virtual  # type: ignore[union-attr]
        where = f"{target[0]}:{target[1]}" if candidate is not None else "relay"
        me = asyncio.current_task()
        try:
            protocol = self._endpoint.connect(target, configuration, PeerProtocol, route=route)  # type: ignore[assignment]
            if pair.dial_task is me:
                pair.dial_protocol = protocol
            await asyncio.wait_for(protocol.wait_handshake(), DIAL_TIMEOUT)
            verified = await authenticate_as_dialer(protocol, self.identity, pair.session.token, record.policy)
        except (AuthError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            text = str(exc) or type(exc).__name__
            if isinstance(exc, AuthError):
                self.stats.auth_failures += 1
            else:
                self.stats.dial_failures += 1
                text = f"QUIC to {where}: {text}"
            record.failures.append(text)
            log.info("dial failed", address=candidate.address, error=text)
            if protocol is not None:
                protocol.close_with(text if isinstance(exc, AuthError) else "dial failed")
            if pair.dial_task is not me:
                return  # abandoned meanwhile: the pair is someone else's business now
            if not speculative:
                pair.failed.add(target)
            pair.dialing = pair.dial_speculative = False
            pair.dial_task = pair.dial_protocol = None
            self._maybe_dial(pair)
            return
        path: PathKind = "relay" if candidate is None else self._direct_kind(candidate)
        connection = self._adopt(protocol, verified, path, dialer=True, introduced_at=pair.introduced_at)
        self._attach_pair(pair, connection, protocol)
        if pair.dial_task is me:
            pair.dialing = pair.dial_speculative = False
            pair.dial_task = pair.dial_protocol = None
        self._deliver(record, connection)

    # --- incoming -----------------------------------------------------------------------------

    def _admit(self, source: Addr, has_token: bool) -> Admission:
        if not self._direct_enabled and not is_virtual(source):
            return Admission.REFUSE  # relay only: never answer anyone directly
        # unauthenticated handshakes hold memory: cap how many are in flight at once
        return Admission.ACCEPT if self._pending_incoming < MAX_PENDING_INCOMING else Admission.REFUSE

    def _new_incoming(self, quic: QuicConnection) -> PeerProtocol:
        protocol = PeerProtocol(quic)
        self._pending_incoming += 1
        self.stats.incoming_attempts += 1
        self._spawn(self._accept(protocol), "accept")
        return protocol

    async def _accept(self, protocol: PeerProtocol) -> None:
        try:
            await asyncio.wait_for(protocol.wait_handshake(), DIAL_TIMEOUT * 2)
            verified = await authenticate_as_listener(protocol, self.identity, self._policy_for_token)
        except (AuthError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            text = str(exc) or type(exc).__name__
            if isinstance(exc, AuthError):
                self.stats.auth_failures += 1
                # the meeting is not known before the proof is read: tell every waiting one
                for record in self._meetings.values():
                    record.failures.append(f"incoming from {protocol.remote_address}: {text}")
            protocol.close_with(text)
            return
        finally:
            self._pending_incoming -= 1
        record = self._by_token.get(verified.token)
        if record is None:
            protocol.close_with("meeting withdrawn")
            return
        route = protocol.route
        path: PathKind = "direct"
        pair: _Pair | None = None
        if route is not None and route.kind == "relay" and route.relay is not None:
            entry = self._relay_routes.get(route.relay.session_id)
            pair = entry[1] if entry is not None else None
            path = "relay"
        else:
            pair = self._pair_for_address(record, protocol.remote_address)
            candidate = pair.session.candidates.get(protocol.remote_address) if pair is not None else None
            path = self._direct_kind(candidate, protocol.remote_address)
        introduced_at = pair.introduced_at if pair is not None else None
        connection = self._adopt(protocol, verified, path, dialer=False, introduced_at=introduced_at)
        if pair is not None:
            self._attach_pair(pair, connection, protocol)
        self._deliver(record, connection)

    def _pair_for_address(self, record: _Meeting, address: Addr) -> _Pair | None:
        for (meeting_id, _), pair in reversed(self._pairs.items()):
            if meeting_id == record.id and address in pair.session.candidates:
                return pair
        return None

    # --- delivery -----------------------------------------------------------------------------

    def _adopt(
        self, protocol: PeerProtocol, verified: Any, path: PathKind, *, dialer: bool, introduced_at: float | None
    ) -> PeerConnection:
        connection = PeerConnection(
            protocol, verified, path, dialer=dialer, introduced_at=introduced_at, on_close=self._on_connection_closed
        )
        self._connections.add(connection)
        self.stats.verified += 1
        if connection.time_to_connect is not None:
            self.stats.connect_times.append(connection.time_to_connect)
        log.info(
            "peer connection verified",
            peer=connection.peer_id,
            path=path,
            remote=connection.remote_address,
            dialer=dialer,
            ms=None if connection.time_to_connect is None else round(connection.time_to_connect * 1000, 1),
        )
        return connection

    def _deliver(self, record: _Meeting, connection: PeerConnection) -> None:
        while record.waiters:
            waiter = record.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return
        if record.listening:
            try:
                self._incoming.put_nowait(connection)
                return
            except asyncio.QueueFull:
                connection.close("peer busy: too many connections waiting to be accepted")
                return
        connection.close("nobody is waiting for this meeting any more")

    def _direct_kind(self, candidate: Candidate | None, address: Addr | None = None) -> PathKind:
        """"lan" for a peer reported as local or on one of our attached networks, else "direct"
        (so a hairpin through the router's public address is "direct")."""
        if candidate is not None and candidate.kind is CandidateKind.LOCAL:
            return "lan"
        host = (candidate.address if candidate is not None else address or ("", 0))[0]
        return "lan" if on_attached_network(host, self._networks) else "direct"

    def _attach_pair(self, pair: _Pair, connection: PeerConnection, protocol: PeerProtocol) -> None:
        pair.connection = connection
        self._pair_by_protocol[protocol] = pair
        self._consider_switch(pair)

    def _on_connection_closed(self, connection: PeerConnection) -> None:
        self._connections.discard(connection)
        protocol = connection._protocol  # noqa: SLF001 - our own class
        pair = self._pair_by_protocol.pop(protocol, None)
        if pair is not None and pair.connection is connection:
            pair.connection = None
            self._drop_relay(pair)
            self._unregister_if_idle(pair.meeting)

    # --- relay and path switching -------------------------------------------------------------

    def _relay_housekeeping(self, pair: _Pair, now: float) -> float | None:
        """Request a relay when punching has not produced a connection in time; keep punching
        slowly while relayed. Returns when it next wants to run, if it waits for something."""
        connection = pair.connection
        if connection is not None and connection.closed:
            pair.connection = connection = None
        if connection is not None:
            if connection.path == "relay" and not pair.session.active(now):
                pair.session.extend(now, 30.0, interval=BACKGROUND_PUNCH_INTERVAL, fast_period=0.0)
            return None
        if not self._relay_enabled or not pair.clients or pair.relay_route is not None or not pair.meeting.wanted:
            return None
        # with punching off, or both NATs mapping per destination, a direct path is hopeless: ask
        # at once (punching goes on in the background and upgrades the connection if it works)
        hopeless = not self._direct_enabled or self._direct_hopeless(pair)
        due = pair.introduced_at + (0.0 if hopeless else self._relay_after)
        if pair.relay_requested_at is not None:
            due = max(due, pair.relay_requested_at + RELAY_REQUEST_RETRY)
        if now < due:
            return due
        if pair.dialing and not self._dial_is_silent_speculation(pair):
            return now + 0.1
        pair.relay_requested_at = now
        request = RelayRequest(token=pair.session.token, instance=pair.session.remote_instance)
        for client in pair.clients:
            if client.send(request):
                self.stats.relay_requests += 1
        log.info("requesting relay", peer_instance=pair.session.remote_instance.hex()[:8], beacons=len(pair.clients))
        return now + RELAY_REQUEST_RETRY

    def _own_mapping_varies(self) -> bool | None:
        """Does our NAT give us a different public address per destination (a "symmetric" NAT)?
        Known once two beacons at different addresses told us what they see; else None."""
        seen: dict[Addr, Addr] = {}
        for client in self._clients:
            beacon, observed = client.beacon_address, client.status.observed
            if beacon is not None and observed is not None:
                seen[beacon] = observed.to_socket()
        return mapping_varies(seen)

    def _direct_hopeless(self, pair: _Pair) -> bool:
        """Both sides behind NATs that map per destination: the address each beacon reports is
        useless to the other peer, punching cannot meet. Both peers see the same facts (each
        one's address at each beacon, through introductions), so both decide alike."""
        if not self._direct_enabled:
            return True
        other = mapping_varies(pair.observed_by)
        if not other:
            return False
        mine = self._own_mapping_varies()
        if not mine:
            return False
        own_ips = {c.status.observed.host for c in self._clients if c.status.observed is not None}
        # behind the same NAT as the other peer: local addresses or a hairpin may still work
        return not own_ips & {address[0] for address in pair.observed_by.values()}

    def _on_relay_message(self, client: BeaconClient, message: Message) -> None:
        if isinstance(message, RelayGrant):
            self.stats.relay_grants += 1
            record = self._by_token.get(message.token)
            pair = self._pairs.get((record.id, message.instance)) if record is not None else None
            beacon = client.beacon_address
            if pair is None or beacon is None or self._endpoint is None:
                return
            if pair.relay_route is not None:
                # a second beacon granted too; the other peer may send through that one
                if len(pair.relay_aliases) < MAX_OBSERVATIONS and len(self._relay_aliases) < MAX_RELAY_ROUTES:
                    pair.relay_aliases[message.session_id] = beacon
                    self._relay_aliases[message.session_id] = pair
                return
            if pair.connection is not None and not pair.connection.closed:
                return  # a direct path won meanwhile
            if len(self._relay_routes) >= MAX_RELAY_ROUTES:
                return
            route = self._endpoint.routes.new(relay=RelayLink(message.session_id, beacon))
            pair.relay_route = route
            self._relay_routes[message.session_id] = (route, pair)
            log.info("relay granted", beacon=str(client.spec), max_bytes=message.max_bytes)
            self._maybe_dial(pair)
        elif isinstance(message, RelayEnd):
            self.stats.relay_ends += 1
            entry = self._relay_routes.get(message.session_id)
            if entry is None:
                return
            route, pair = entry
            try:
                code = ErrorCode(message.code).name
            except ValueError:
                code = str(message.code)
            text = f"relay ended by the beacon: {code} {message.message}".strip()
            pair.meeting.failures.append(text)
            connection = pair.connection
            self._drop_relay(pair)
            if connection is not None and connection.path == "relay":
                connection.close(text)

    def _on_token_full(self, client: BeaconClient, token: bytes, text: str) -> None:
        """A beacon refused one of a meeting's tokens as full: the peers cannot meet there."""
        record = self._by_token.get(token)
        if record is not None:
            if text not in record.refusals:
                record.refusals.append(text)
            log.warning("meeting token refused as full", beacon=str(client.spec), reason=text)

    def _on_beacon_lost(self, client: BeaconClient, address: Addr) -> None:
        """Relay sessions live in the beacon: when it goes, a relayed connection moves to the
        session another beacon granted for the pair, if any (streams survive); else it ends now
        (the app sees an error at once, not after QUIC's idle timeout). Direct ones carry on."""
        for session_id, pair in list(self._relay_aliases.items()):
            if pair.relay_aliases.get(session_id) == address:  # a spare on the lost beacon
                del pair.relay_aliases[session_id]
                del self._relay_aliases[session_id]
        for route, pair in list(self._relay_routes.values()):
            if route.relay is None or route.relay.beacon != address:
                continue
            connection = pair.connection
            if connection is not None and not connection.closed and self._move_relay(pair, route):
                log.info("relay moved", peer=connection.peer_id, lost=str(client.spec), beacon=route.relay.beacon)
                continue
            self._drop_relay(pair)
            text = f"relay lost: beacon {client.spec} disconnected"
            pair.meeting.failures.append(text)
            if connection is not None and connection.path == "relay":
                connection.close(text)

    def _move_relay(self, pair: _Pair, route: Route) -> bool:
        """Send through a spare session of the pair (granted by a beacon still connected)."""
        assert route.relay is not None
        connected = {c.beacon_address for c in self._clients if c.connected}
        for session_id, beacon in list(pair.relay_aliases.items()):
            if beacon not in connected:
                continue
            del pair.relay_aliases[session_id]
            self._relay_aliases.pop(session_id, None)
            self._relay_routes.pop(route.relay.session_id, None)
            route.use_relay(RelayLink(session_id, beacon))
            self._relay_routes[session_id] = (route, pair)
            if pair.connection is not None:
                pair.connection._set_path()  # noqa: SLF001 - still "relay": reports the change
            self.stats.path_switches += 1
            return True
        return False

    def _drop_relay(self, pair: _Pair) -> None:
        route = pair.relay_route
        pair.relay_route = None
        for session_id in pair.relay_aliases:
            self._relay_aliases.pop(session_id, None)
        pair.relay_aliases.clear()
        if route is not None and route.relay is not None:
            self._relay_routes.pop(route.relay.session_id, None)
            if self._endpoint is not None and (pair.connection is None or pair.connection.closed):
                self._endpoint.routes.drop(route)

    def _on_relay_frame(self, data: bytes, source: Addr) -> None:
        try:
            session_id, payload = parse_relay_frame(data)
        except RelayFrameError:
            self.stats.probes_rejected += 1
            return
        entry = self._relay_routes.get(session_id)
        if entry is None:
            pair = self._relay_aliases.get(session_id)
            if pair is not None and pair.relay_route is not None and pair.relay_aliases.get(session_id) == source:
                entry = (pair.relay_route, pair)
                source = pair.relay_route.relay.beacon if pair.relay_route.relay is not None else source
        if entry is None or self._endpoint is None:
            return
        route, _ = entry
        if route.relay is None or source != route.relay.beacon:
            return  # only the beacon that granted the session may deliver for it
        self._endpoint.inject(payload, route)

    def _on_unexpected_source(self, protocol: Any, source: Addr) -> None:
        """A packet of a connection came from an address its route does not use: the peer
        switched to a direct path, or its NAT gave it a new port. Probe it; switch once confirmed."""
        pair = self._pair_by_protocol.get(protocol)
        if pair is None:
            return
        route = protocol.route
        if route is not None and route.relay is not None and source == route.relay.beacon:
            return
        pair.rebind = source
        now = time.monotonic()
        candidate = pair.session.candidates.get(source)
        if candidate is not None and candidate.last_confirmed is not None and now - candidate.last_confirmed < 2.0:
            self._consider_switch(pair)
            return
        sends = pair.session.add_candidates([source], CandidateKind.REFLEXIVE, now)
        if not pair.session.active(now):
            pair.session.extend(now, 3.0, interval=0.1, fast_period=1.0)
            self._wake.set()
        self._send_all(sends)

    def _consider_switch(self, pair: _Pair) -> None:
        connection = pair.connection
        if connection is None or connection.closed:
            return
        route = connection._protocol.route  # noqa: SLF001 - our own class
        if route is None:
            return
        now = time.monotonic()
        fresh = [
            c
            for c in pair.session.confirmed()
            if c.last_confirmed is not None and now - c.last_confirmed < 10.0 and c.address not in pair.failed
        ]
        target: Candidate | None = None
        if route.kind == "relay":
            target = fresh[0] if fresh else None
        elif pair.rebind is not None:
            target = next((c for c in fresh if c.address == pair.rebind), None)
        else:
            # a LAN path that confirmed after we connected over the public one is the better path
            current = pair.session.candidates.get(route.direct) if route.direct is not None else None
            if current is None or current.kind is not CandidateKind.LOCAL:
                target = next((c for c in fresh if c.kind is CandidateKind.LOCAL), None)
        if target is None:
            return
        pair.rebind = None
        if route.use_direct(target.address):
            self.stats.path_switches += 1
            connection._set_path(self._direct_kind(target))  # noqa: SLF001
            log.info("path switched", peer=connection.peer_id, path=connection.path, remote=target.address)

    # --- reports ------------------------------------------------------------------------------

    def _report(self, record: _Meeting) -> dict[str, object]:
        pairs = [pair for (meeting_id, _), pair in self._pairs.items() if meeting_id == record.id]
        return {
            "beacons": [
                {
                    "beacon": status.beacon,
                    "state": status.state,
                    "observed": str(status.observed) if status.observed else None,
                    "last_error": status.last_error,
                }
                for status in self.beacon_status
            ],
            "introductions": record.introductions,
            "candidates": [
                {
                    "address": f"{c.address[0]}:{c.address[1]}",
                    "kind": c.kind.value,
                    "probes_sent": c.probes_sent,
                    "confirmed": c.confirmed_at is not None,
                }
                for pair in pairs
                for c in pair.session.candidates.values()
            ],
            "probes_sent": sum(pair.session.stats.probes_sent for pair in pairs),
            "probes_received": sum(
                pair.session.stats.pings_received + pair.session.stats.pongs_received for pair in pairs
            ),
            "failures": list(record.failures),
            "refusals": list(record.refusals),
        }

    def _failure_text(self, record: _Meeting, timeout: float) -> str:
        report = self._report(record)
        beacons = report["beacons"]
        assert isinstance(beacons, list)
        reached = [b["beacon"] for b in beacons if b["state"] == "connected"]
        if not self._clients and not self._lan_enabled:
            where = "no beacon configured and LAN discovery off"
        elif self._clients:
            where = f"beacons reached {len(reached)}/{len(self._clients)}" + (
                "" if reached else " (" + "; ".join(f"{b['beacon']}: {b['last_error']}" for b in beacons) + ")"
            )
        else:
            where = "LAN discovery only"
        candidates = report["candidates"]
        assert isinstance(candidates, list)
        tried = ", ".join(
            f"{c['address']} ({c['kind']}, {c['probes_sent']} probes{', answered' if c['confirmed'] else ''})"
            for c in candidates
        )
        text = (
            f"no verified connection for this meeting within {timeout:g}s (expecting {record.policy.description}): "
            f"{where}; introductions {record.introductions}; "
            f"candidates tried: {tried or 'none'}; "
            f"probes sent {report['probes_sent']}, received {report['probes_received']}"
        )
        refusals = report["refusals"]
        if refusals:
            assert isinstance(refusals, list)
            text += "; " + "; ".join(refusals)
        failures = report["failures"]
        if failures:
            assert isinstance(failures, list)
            text += f"; last error: {failures[-1]}"
        return text

    # --- LAN ----------------------------------------------------------------------------------

    async def _start_lan(self) -> None:
        from discretpeer.lan import LanDiscovery  # optional part: imports zeroconf

        assert self._endpoint is not None
        self._lan = LanDiscovery(
            port=self._endpoint.port,
            instance=self.instance,
            on_found=self._on_lan_sighting,
            interfaces=self._lan_interfaces,
        )
        await self._lan.start()
        await self._lan.set_tokens({t for t, r in self._by_token.items() if r.wanted})

    def _on_lan_sighting(self, sighting: Any) -> None:
        self.stats.lan_sightings += 1
        self._introduce(
            sighting.token,
            sighting.instance,
            public=[],
            local=[a.to_socket() for a in sighting.addresses],
            via="lan",
        )

    # --- tasks --------------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task failed", task=task.get_name(), error=repr(task.exception()))
