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
import functools
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from certs import create_bundle
from discretpeer.addresses import Addr
from discretpeer.auth import Expectation, PeerPolicy
from discretpeer.beacon_client import BeaconClient
from discretpeer.beacon_set import BeaconSet
from discretpeer.behaviour_probe import BehaviourProber
from discretpeer.candidates import attached_networks
from discretpeer.config import BeaconSpec, parse_beacons
from discretpeer.connection import (
    PathKind,
    PeerConnection,
    PeerProtocol,
    VerifiedPeer,
)
from discretpeer.dialer import Dialer, peer_quic_configuration
from discretpeer.endpoint import Endpoint
from discretpeer.errors import ConnectError
from discretpeer.failure_report import FailureReport
from discretpeer.flow import AppPacedQuicConnection
from discretpeer.identity import Identity
from discretpeer.logs import get_logger
from discretpeer.meeting_book import Meeting, MeetingBook
from discretpeer.pair_state import Dial
from discretpeer.pairs import Pair, PairDriver, PairSettings
from discretpeer.path_mtu import AIOQUIC_MAX_DATAGRAM, check_max_datagram_size
from discretpeer.peer_incoming import IncomingHandshakes
from discretpeer.peer_network import PeerNetwork
from discretpeer.peer_stats import PeerStats
from discretpeer.portmap import PortMapper
from discretpeer.proto.wire import INSTANCE_SIZE
from discretpeer.quic_stack import load_stack
from discretpeer.tasks import TaskSet, wait_for
from discretpeer.tokens import DEFAULT_ROTATION_SECONDS, pair_meeting
from discretpeer.traversal import Candidate
from discretpeer.tuning import DEFAULT_TUNING, Tuning

__all__ = ["Peer", "PeerStats"]

log = get_logger("discretpeer.peer")

MAX_INCOMING_BACKLOG = 64
TOKEN_REFRESH_INTERVAL = 60.0
CANDIDATE_REFRESH_INTERVAL = 60.0


class Peer(FailureReport):
    """A peer: owns one UDP socket for beacons, probes and every peer connection.

    ``beacons``: a list of :class:`BeaconSpec` or ``{"hostname": "host:port", "cert_hash": "..."}``.
    ``lan``: discover peers on the local network by mDNS (no beacon needed).
    ``relay``: fall back to relaying through a beacon when no direct path is verified within
    ``relay_after`` seconds. ``direct=False`` never punches (relay only: the other peer then never
    sees packets from our address). ``max_datagram_size``: the largest UDP payload this peer sends
    (1200..16000): on qh3 (the default stack) 1350, or this size when below 16000, from the first
    packet; on aioquic path-MTU probing never goes above it. E.g. 1472 on a LAN, 1280 on a tunnel.
    ``port_mapping``: ask the gateway for a public port (PCP, NAT-PMP, UPnP-IGD) and announce it
    (not when bound to loopback); ``port_mapping_gateway``: the gateway's address (default: the
    routing table's), or ``"ip:port"`` to ask only PCP/NAT-PMP at that port. ``tuning``: data-path
    settings (:class:`discretpeer.tuning.Tuning`; the defaults are what the library is measured with).
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
        port_mapping: bool = True,
        port_mapping_gateway: str | None = None,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self.identity = identity
        self._max_datagram_size = check_max_datagram_size(max_datagram_size)
        load_stack(tuning.quic_stack)
        self.beacons: list[BeaconSpec] = parse_beacons(list(beacons))
        self.instance = os.urandom(INSTANCE_SIZE)
        self.stats = PeerStats()
        self._host = host
        self._port = port
        self._lan_enabled = lan
        self._direct_enabled = direct
        self._book = MeetingBook(rotation_seconds)
        self._beacons = BeaconSet(self.beacons, self._book)
        self._clients: list[BeaconClient] = self._beacons.clients  # read by FailureReport and the CLI
        self._network = PeerNetwork(
            self.instance,
            report_local=report_local_candidates,
            port_mapping=port_mapping and direct,
            port_mapping_gateway=port_mapping_gateway,
            lan_interfaces=lan_interfaces,
            on_candidates=self._beacons.refresh_candidates,
            on_lan_sighting=self._on_lan_sighting,
        )
        self._behaviour: BehaviourProber | None = None
        self._endpoint: Endpoint | None = None
        self._connections: set[PeerConnection] = set()
        self._incoming: asyncio.Queue[PeerConnection] = asyncio.Queue(MAX_INCOMING_BACKLOG)
        self._tasks = TaskSet(log)
        self._spawn = self._tasks.spawn
        self._closed = False
        self._started = False
        self._dialer = Dialer(
            identity,
            self.stats,
            direct_enabled=direct,
            spawn=self._spawn,
            is_closed=lambda: self._closed,
            on_dialed=self._on_dialed,
            configuration=functools.partial(
                peer_quic_configuration, is_client=True, max_datagram_size=self._max_datagram_size, tuning=tuning
            ),
        )
        settings = PairSettings(self.instance, punch_duration, relay, direct, relay_after)
        self._driver = PairDriver(
            settings, self.stats, self._book, self._dialer, self._clients, lambda: self._network.candidates
        )
        self._pairs = self._driver.pairs
        self._incoming_handshakes = IncomingHandshakes(
            identity,
            self.stats,
            self._book,
            self._driver,
            direct_enabled=direct,
            spawn=self._spawn,
            is_closed=lambda: self._closed,
            on_verified=self._on_incoming,
        )
        self._driver.birthday.spawn = self._spawn
        self._driver.on_direct = self._sync_tokens  # a relayed meeting went direct: withdraw it
        bundle = create_bundle("discretpeer", private_key=identity.private_key)
        self._tuning = tuning
        self._server_config = peer_quic_configuration(
            is_client=False, max_datagram_size=self._max_datagram_size, tuning=tuning
        )
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
            create_server_protocol=self._incoming_handshakes.new_protocol,
            admit=self._incoming_handshakes.admit,
            on_datagram=self._on_datagram,
            virtual_paths=True,
            on_unexpected_source=self._driver.on_unexpected_source,
            connection_class=AppPacedQuicConnection,
            tuning=self._tuning,
        )
        self._endpoint.on_relay_frames = self._driver.relay.on_frames
        self._network.started(self._endpoint)
        self._behaviour = BehaviourProber(self._endpoint.sendto)
        self._driver.started(self._endpoint, attached_networks())
        self._network.start_port_mapping()
        self._beacons.start(
            self._endpoint,
            self.instance,
            self._driver,
            get_candidates=lambda: list(self._network.candidates),
            observe_behaviour=self._behaviour.observe,
        )
        if self._lan_enabled:
            await self._network.start_lan(self._book.wanted_tokens())
        self._spawn(self._driver.punch_loop(), "punch loop")
        self._spawn(self._maintenance_loop(), "maintenance")
        log.info("peer started", peer_id=self.peer_id, port=self.port, beacons=[str(b) for b in self.beacons])
        return self

    async def close(self) -> None:
        """Close every connection, the beacon connections, mDNS and the socket."""
        if self._closed:
            return
        self._closed = True
        for meeting in self._book:
            for waiter in meeting.waiters:
                if not waiter.done():
                    waiter.set_exception(ConnectionError("peer closed"))
        # what the app wrote gets delivered (bounded wait), then every connection closes
        await asyncio.gather(
            *(connection.aclose("peer closing", timeout=2.0) for connection in list(self._connections)),
            return_exceptions=True,
        )
        await self._network.close_lan()
        await self._beacons.close()
        await self._network.close_port_mapping()
        await self._tasks.cancel_all()
        for connection in list(self._connections):  # any verified while the others were closing
            connection.close("peer closing")
        self._driver.birthday.close()  # extra sockets of birthday probing
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
    def port_mapper(self) -> PortMapper | None:
        """Asks the gateway for a public port (None when not asked: loopback, ``port_mapping=False``)."""
        return self._network.port_mapper

    @property
    def connections(self) -> list[PeerConnection]:
        return [c for c in self._connections if not c.closed]

    async def wait_beacons(self, timeout: float = 5.0, *, count: int = 1) -> int:
        """Wait until ``count`` beacons (default: one) are connected; returns how many are."""
        return await self._beacons.wait(timeout, count)

    async def connect(self, meeting: str | bytes, *, expect: Expectation, timeout: float = 10.0) -> PeerConnection:
        """Meet the peer(s) sharing ``meeting`` and return the first verified connection.

        ``expect``: a peer id, a set of peer ids, a callback ``(peer_id) -> bool``, or ``None``
        for any peer that knows the meeting. Raises :class:`ConnectError` on timeout, saying what
        was tried.
        """
        self._check_open()
        booked = self._book.register(meeting, PeerPolicy(expect))
        waiter: asyncio.Future[PeerConnection] = asyncio.get_running_loop().create_future()
        booked.waiters.append(waiter)
        self._sync_tokens()
        try:
            return await wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return waiter.result()  # verified in the same instant the timer fired
            raise ConnectError(self._failure_text(booked, timeout), self._report(booked)) from None
        finally:
            if waiter in booked.waiters:
                booked.waiters.remove(waiter)
            if not waiter.done():
                waiter.cancel()
            self._unregister_if_idle(booked)

    async def connect_to_peer(self, peer_id: str, *, timeout: float = 10.0) -> PeerConnection:
        """Meet a known peer by its id alone (the meeting is derived from both ids)."""
        return await self.connect(pair_meeting(self.peer_id, peer_id), expect=peer_id, timeout=timeout)

    async def listen(self, meeting: str | bytes, *, expect: Expectation) -> None:
        """Wait on ``meeting`` until :meth:`unlisten`; verified connections arrive in :meth:`incoming`."""
        self._check_open()
        booked = self._book.register(meeting, PeerPolicy(expect))
        booked.listening = True
        self._sync_tokens()

    async def listen_for_peers(self, peer_ids: Iterable[str]) -> None:
        """Listen on the pair meeting of each known peer id (what ``connect_to_peer`` dials)."""
        for peer_id in peer_ids:
            await self.listen(pair_meeting(self.peer_id, peer_id), expect=peer_id)

    async def unlisten(self, meeting: str | bytes) -> None:
        booked = self._book.find(meeting)
        if booked is not None:
            booked.listening = False
            self._unregister_if_idle(booked)

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

    def _unregister_if_idle(self, meeting: Meeting) -> None:
        """Withdraw a meeting nobody waits on; forget it once none of its connections is alive
        (until then its probes still count: background punching, NAT rebinding)."""
        if meeting.wanted or self._closed:
            return
        self._sync_tokens()
        if any(
            pair.meeting is meeting and pair.connection is not None and not pair.connection.closed
            for pair in self._pairs.values()
        ):
            return
        self._book.forget(meeting)
        self._sync_tokens()

    def _sync_tokens(self) -> None:
        """Announce the meetings someone waits on, and those with a relayed connection: the beacon
        must still introduce that pair when an address changes (a port mapping granted late), or
        the connection could never move to the direct path that then opens."""
        tokens = self._book.wanted_tokens()
        for pair in self._pairs.values():
            if pair.connection is not None and not pair.connection.closed and pair.connection.path == "relay":
                tokens.update(pair.meeting.tokens)
        self._beacons.set_tokens(tokens)
        if self._network.lan is not None:
            self._spawn(self._network.lan.set_tokens(tokens), "lan tokens")

    def _refresh_tokens(self) -> None:
        if self._book.refresh_tokens():
            self._sync_tokens()

    async def _maintenance_loop(self) -> None:
        last_candidates = time.monotonic()
        while True:
            await asyncio.sleep(TOKEN_REFRESH_INTERVAL)
            self._refresh_tokens()
            if time.monotonic() - last_candidates >= CANDIDATE_REFRESH_INTERVAL:
                last_candidates = time.monotonic()
                networks = attached_networks()
                changed = networks != self._driver.networks
                self._driver.networks = networks
                if self._network.refresh(changed):
                    self._beacons.refresh_candidates()

    async def probe_hairpin(self, public: Addr, timeout: float = 0.6) -> float | None:
        """Does our NAT hairpin? Seconds until a small random probe sent from this peer's socket
        to ``public`` (our own public address, as a beacon saw it) came back to it, or None
        (not started, or nothing came back within ``timeout``). ``discretpeer doctor`` uses it."""
        if self._behaviour is None:
            return None
        return await self._behaviour.hairpin(public, timeout)

    def _on_datagram(self, data: bytes, source: Addr) -> None:
        """Non-QUIC datagrams: answers from a beacon's behaviour port, else relay frames and probes."""
        if self._behaviour is not None and self._behaviour.on_datagram(data, source):
            return
        self._driver.on_datagram(data, source)

    # --- incoming -----------------------------------------------------------------------------

    def _on_incoming(
        self, meeting: Meeting, protocol: PeerProtocol, verified: VerifiedPeer, path: PathKind, pair: Pair | None
    ) -> None:
        introduced_at = pair.state.introduced_at if pair is not None else None
        connection = self._adopt(protocol, verified, path, dialer=False, introduced_at=introduced_at)
        if pair is not None:
            self._driver.attach(pair, connection, protocol, None)
        self._deliver(meeting, connection)

    def _on_dialed(
        self, pair: Pair, dial: Dial, candidate: Candidate | None, protocol: PeerProtocol, verified: VerifiedPeer
    ) -> None:
        path: PathKind = "relay" if candidate is None else self._driver.path_kind(candidate, dial.target)
        connection = self._adopt(protocol, verified, path, dialer=True, introduced_at=pair.state.introduced_at)
        if pair.state.dialing(dial.attempt):
            self._dialer.settled(pair)
        self._driver.attach(pair, connection, protocol, dial.attempt)
        self._deliver(pair.meeting, connection)

    # --- delivery -----------------------------------------------------------------------------

    def _adopt(
        self, protocol: PeerProtocol, verified: Any, path: PathKind, *, dialer: bool, introduced_at: float | None
    ) -> PeerConnection:
        connection = PeerConnection(
            protocol,
            verified,
            path,
            dialer=dialer,
            introduced_at=introduced_at,
            on_close=self._on_connection_closed,
            on_quiet=self._beacons.on_connection_quiet,
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

    def _deliver(self, meeting: Meeting, connection: PeerConnection) -> None:
        while meeting.waiters:
            waiter = meeting.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return
        if meeting.listening:
            try:
                self._incoming.put_nowait(connection)
                return
            except asyncio.QueueFull:
                connection.close("peer busy: too many connections waiting to be accepted")
                return
        connection.close("nobody is waiting for this meeting any more")

    def _on_connection_closed(self, connection: PeerConnection) -> None:
        self._connections.discard(connection)
        pair = self._driver.connection_closed(connection)
        if pair is not None:
            self._unregister_if_idle(pair.meeting)

    # --- LAN ----------------------------------------------------------------------------------

    def _on_lan_sighting(self, sighting: Any) -> None:
        self.stats.lan_sightings += 1
        self._driver.introduce(
            sighting.token,
            sighting.instance,
            public=[],
            local=[a.to_socket() for a in sighting.addresses],
            via="lan",
        )
