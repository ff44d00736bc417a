"""The asyncio/QUIC edge of the beacon: sockets, connections, frames in and out.

Protocol decisions live in sans-I/O classes (:class:`~beacon.meetings.MeetingTable`,
:class:`~beacon.relay.RelayTable`, :mod:`beacon.limits`); this module feeds them and writes what
they return. Nothing here awaits while handling a frame: a write is ``send_stream_data`` into
the connection's buffer plus a transmit scheduled with ``call_soon``, so a client that does not
read cannot delay anyone else. Its buffer is measured after every write (unacknowledged bytes on
stream 0) and it is dropped with SLOW_READER above ``max_unsent_bytes``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import gc
import ipaddress
import itertools
import os
import socket
import time
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType

from beacon import quic_tuning, stun, workers
from beacon.behaviour import BehaviourResponder, cookie_key
from beacon.config import BeaconConfig
from beacon.limits import KeyedBuckets, KeyedCounts, RateMeter, TokenBucket, ip_key
from beacon.logs import null_logger
from beacon.meetings import Announced, MeetingTable, TooManyTokens
from beacon.metrics import BeaconMetrics, MetricsHTTPServer
from beacon.relay import RelayEnded, RelaySession, RelaySide, RelayTable, relay_quota
from beacon.relay_link import CROSS_MACHINE_SID_BYTE, LinkVia, Proxy, RelayLink, link_key
from beacon.store import MeetingStore, make_store
from beacon.tcp_service import TcpService, WebEndpoint
from certs import CertificateBundle, create_bundle
from discretpeer import _aioquic, stateless_reset
from discretpeer.addresses import Addr, unmap_host
from discretpeer.endpoint import (
    CONNECTION_ID_LENGTH,
    SMALLEST_INITIAL,
    Admission,
    Endpoint,
    EndpointProtocol,
    enlarge_buffers,
    normalize_address,
)
from discretpeer.proto import wire
from discretpeer.proto.relay_frame import RELAY_DATA, RELAY_HEADER_SIZE
from discretpeer.proto.wire import Address, ErrorCode, WireError
from discretpeer.tasks import cancel_and_wait

TRIM_AFTER_HANDSHAKE = True  # see beacon.quic_tuning (the benchmarks turn it off to compare)
DEFER_HANDSHAKES = True  # see _BeaconEndpoint
MAX_QUEUED_HANDSHAKE_DATAGRAMS = 2048
_LONG_HEADER_QUIC = 0xC0  # QUIC long header form bit + fixed bit
GC_FULL_INTERVAL = 3600.0  # seconds between full garbage collections with manage_gc
SETTLE_SECONDS = 3.0  # after the handshake: then a connection's ciphers are built per packet
CLOSE_GRACE = 1.0  # seconds a fatal Error frame gets to be acknowledged before the close
HOUSEKEEPING_INTERVAL = 1.0
# stateless resets for packets of connections this process does not know (after a restart):
# at most this many per second, all sources together (each is smaller than its trigger anyway)
STATELESS_RESETS_PER_SECOND = 2000.0
STATELESS_RESET_BURST = 2000.0
_NO_IPV6 = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT, errno.ENETUNREACH}


def _is_own_socket(endpoint: Endpoint, source: Addr) -> bool:
    """True for a source that is (or may be) this very socket, or port 0: a packet spoofed from
    it must not make the beacon answer itself."""
    if source[1] == 0:
        return True
    host, port = endpoint.local_address
    if source[1] != port:
        return False
    if source[0] == host:
        return True
    try:
        ip = ipaddress.ip_address(source[0].split("%", 1)[0])
    except ValueError:
        return True
    return ip.is_loopback or ip.is_unspecified or host in ("0.0.0.0", "::")


def validated_address(quic: QuicConnection) -> Addr | None:
    """The address this connection's packets come from that QUIC proved receives: the active
    path if validated (handshake or PATH_CHALLENGE/RESPONSE), else the last validated one.

    aioquic makes any new source address of a decryptable packet the active path *before*
    validating it (RFC 9000 §9.3), so one spoofed copy of a client's packet would otherwise
    point introductions and relay forwarding at a victim: nothing the beacon sends on its own
    behalf goes to an address that has not answered a challenge."""
    for address in _aioquic.validated_path_addresses(quic):
        return normalize_address(address)
    return None


def _validated_paths(quic: QuicConnection) -> list[Addr]:
    return [normalize_address(address) for address in _aioquic.validated_path_addresses(quic)]


class _Client:
    """Server-side state of one client connection. ``protocol`` is a :class:`BeaconProtocol`
    (QUIC) or a :class:`beacon.tcp_service.TcpClient` (TLS/TCP): both offer ``send_frame``,
    ``unsent_bytes``, ``can_send_frames``, ``validated_address``, ``validated_paths``, ``close``,
    ``transmit``, ``cancel_timer``, and ``endpoint`` (what relay datagrams to this client go through)."""

    __slots__ = (
        "key",
        "protocol",
        "via",
        "address",
        "observed",
        "ip",
        "instance",
        "decoder",
        "frames",
        "hello",
        "closing",
        "gone",
        "counted",
        "refusal",
        "timer",
    )

    def __init__(self, key: int, protocol: Any, address: Addr, max_frame: int) -> None:
        self.key = key
        self.protocol = protocol
        self.via: Any = protocol.endpoint  # an Endpoint, or the TcpClient itself
        self.address = address
        self.observed: Address | None = None
        self.ip = ip_key(address[0])
        self.instance = b""
        self.decoder = wire.FrameDecoder(max_frame=max_frame)
        self.frames: TokenBucket | None = None
        self.hello = 0  # the protocol version of its Hello (0: none yet)
        self.closing = False  # decided to close: no more frames in or out, gone from the tables
        self.gone = False  # QUIC connection terminated
        self.counted = False  # counted in the per-IP connection count
        self.refusal: ErrorCode | None = None
        self.timer: asyncio.TimerHandle | None = None


class BeaconProtocol(EndpointProtocol):
    """A beacon connection: hands stream-0 bytes and the end of the connection to the server."""

    dead = False  # terminated and dismantled: every call is a no-op
    # answer in the same loop iteration: deferring the transmit saves CPU for bulk receivers but
    # holds every Welcome/Introduction/Pong behind the rest of the batch (measured with 10,000
    # peers and churn: introduction latency p50 6.0 ms deferred, 3.8 ms not)
    coalesce_transmits = False

    def __init__(self, quic: QuicConnection, server: BeaconServer) -> None:
        super().__init__(quic)
        self.server = server
        self.peer: _Client | None = None
        if TRIM_AFTER_HANDSHAKE:
            quic_tuning.prepare_server_connection(quic)
            quic_tuning.lighten_protocol(self)
        # tokens derived from the beacon's key: a restarted beacon can still reset this connection
        quic_tuning.derive_reset_tokens(quic, server._reset_token)  # noqa: SLF001 - the server's own protocol and endpoint classes

    def transmit(self) -> None:
        if not self.dead:
            super().transmit()

    # the client-connection interface the server uses (see _Client; TcpClient has the same)

    def send_frame(self, data: bytes) -> None:
        self.quic.send_stream_data(0, data)

    def unsent_bytes(self) -> int:
        return _aioquic.unacked_bytes(self.quic, 0)

    def can_send_frames(self) -> bool:
        return _aioquic.has_stream(self.quic, 0)  # the client opened stream 0

    def validated_address(self) -> Addr | None:
        return validated_address(self.quic)

    def validated_paths(self) -> list[Addr]:
        return _validated_paths(self.quic)

    def _dismantle(self) -> None:
        self.dead = True
        self.peer = None  # the _Client keeps its protocol: no cycle is left between them
        quic_tuning.dismantle(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.dead:
            return
        if self.peer is None:
            self.server._connection_started(self, (addr[0], addr[1]))  # noqa: SLF001 - the server's own protocol and endpoint classes
        try:
            super().datagram_received(data, addr)
        except Exception:  # noqa: BLE001 - a bug must cost this connection only, and only once
            self.server._internal_error(self)  # noqa: SLF001 - the server's own protocol and endpoint classes
            return
        # aioquic's datagram_received ends with a transmit, after every event (and every frame
        # the server wrote in response) was handled: no need for another one in _flush
        self.server._dirty.discard(self)  # noqa: SLF001 - the server's own protocol and endpoint classes
        client = self.peer
        if client is not None and not client.closing and self.closing:
            # the client closed: leave the tables now, not after aioquic's draining period
            self.server._leave(client)  # noqa: SLF001 - the server's own protocol and endpoint classes

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            # handled here, never buffered in asyncio StreamReaders (those are unbounded)
            if self.peer is not None:
                self.server._stream_data(self.peer, event)  # noqa: SLF001 - the server's own protocol and endpoint classes
            return
        if isinstance(event, (events.StopSendingReceived, events.StreamReset)):
            # the client gave up the control stream (the only one it may open): nothing more
            # can be said on it, so the connection ends, once
            if self.peer is not None and event.stream_id == 0:
                reason = "stop_sending" if isinstance(event, events.StopSendingReceived) else "stream_reset"
                self.server._control_stream_lost(self.peer, reason)  # noqa: SLF001 - the server's own protocol and endpoint classes
            return
        super().quic_event_received(event)
        if isinstance(event, events.HandshakeCompleted):
            if self.peer is not None:
                self.server._handshake_completed(self.peer)  # noqa: SLF001 - the server's own protocol and endpoint classes
            if TRIM_AFTER_HANDSHAKE:
                quic_tuning.trim_after_handshake(self.quic)
                self.server._settling.append((self.loop.time() + SETTLE_SECONDS, self))  # noqa: SLF001 - the server's own protocol and endpoint classes
        elif isinstance(event, events.ConnectionTerminated):
            if self.peer is not None:
                self.server._connection_lost(self.peer)  # noqa: SLF001 - the server's own protocol and endpoint classes
            if TRIM_AFTER_HANDSHAKE:
                # after aioquic's own processing of this event (and its transmit) has finished
                self.loop.call_soon(self._dismantle)


class _BeaconEndpoint(Endpoint):
    """The beacon's socket: handshake packets wait behind everything else.

    A new connection's first Initial costs ~3 ms of CPU (key exchange, signature); a burst of
    them (a reconnect storm, or 200 new peers per second) read in one go would hold every
    registered peer's Ping, Announce and relayed datagram behind it. Datagrams with a QUIC long
    header (Initial, Handshake: only handshakes use them) are queued and handled one per event
    loop iteration, so the loop reads and serves the socket between two of them. The queue is
    bounded: beyond it Initials are dropped (the client retransmits), like a full socket buffer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("connection_class", quic_tuning.BeaconQuicConnection)
        self.on_error: Any = None  # called with no argument when a datagram's handling raised
        self.junk_initials = 0
        super().__init__(*args, **kwargs)
        self._handshake_queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._drain_handle: asyncio.Handle | None = None
        self.handshake_datagrams_dropped = 0
        # (datagram, source, destination connection id) of a short-header packet nobody knows
        self.on_unknown_connection: Any = None
        self.on_stun: Any = None  # called with (datagram, source) for a STUN message
        # called with (datagrams, segment size, source) for a GRO read of non-QUIC datagrams;
        # True when it took them all (the relay's run), else they go to on_datagram one by one
        self.on_relay_run: Any = None

    def _maybe_accept(self, data: bytes, source: Addr, header: Any, relay_route: Any = None) -> Any:
        if header.packet_type == QuicPacketType.ONE_RTT:
            # a short-header packet for a connection ID nobody here knows: a client of a
            # previous run of this beacon (or of another process sharing cert_der.bin)
            if self.on_unknown_connection is not None:
                self.on_unknown_connection(data, source, header.destination_cid)
            return None
        # an Initial that does not decrypt with its own Initial keys is junk: no state, no
        # per-IP budget spent for its (possibly spoofed) source
        if (
            header.packet_type == QuicPacketType.INITIAL
            and header.version in self._server_configuration.supported_versions  # type: ignore[union-attr]  # a server endpoint always has its configuration
            and len(data) >= SMALLEST_INITIAL
            and not quic_tuning.initial_decrypts(data, CONNECTION_ID_LENGTH)
        ):
            self.junk_initials += 1
            return None
        return super()._maybe_accept(data, source, header, relay_route)

    def _receive_coalesced(self, data: bytes, segment: int, addr: Any) -> bool:
        if data[0] == RELAY_DATA and self.on_relay_run is not None:
            if not self.on_relay_run(data, segment, normalize_address(addr)):
                return False  # the reader hands them over one by one (and counts them so)
            self.datagrams_received += -(-len(data) // segment)
            self.coalesced_reads += 1
            return True
        return super()._receive_coalesced(data, segment, addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data and data[0] < 0x40 and self.on_stun is not None and stun.is_stun(data):
            self.on_stun(data, addr)  # STUN for browsers (issue 19): never QUIC (fixed bit clear)
            return
        if data and data[0] & _LONG_HEADER_QUIC == _LONG_HEADER_QUIC and DEFER_HANDSHAKES:
            if len(self._handshake_queue) >= MAX_QUEUED_HANDSHAKE_DATAGRAMS:
                self.handshake_datagrams_dropped += 1
                return
            self._handshake_queue.append((data, addr))
            if self._drain_handle is None:
                self._drain_handle = asyncio.get_running_loop().call_soon(self._drain_one)
            return
        super().datagram_received(data, addr)

    def _read_failed(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error()  # logged with its traceback, counted; the reader goes on
        else:
            super()._read_failed(exc)

    def _drain_one(self) -> None:
        self._drain_handle = None
        queue = self._handshake_queue
        if queue and not self.closed:
            data, addr = queue.popleft()
            try:
                super().datagram_received(data, addr)
            except Exception:  # noqa: BLE001 - the queue must go on draining whatever happened
                if self.on_error is not None:
                    self.on_error()
        if queue and not self.closed:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain_one)
        elif self.closed:
            queue.clear()


class BeaconServer:
    """One beacon in the current event loop. ``async with BeaconServer(config, bundle) as s:``.

    ``bundle`` defaults to a fresh in-memory certificate, ``log`` to a logger that drops
    everything, ``metrics`` to a new :class:`BeaconMetrics` (one registry per beacon).
    """

    def __init__(
        self,
        config: BeaconConfig | None = None,
        bundle: CertificateBundle | None = None,
        *,
        log: Any = None,
        metrics: BeaconMetrics | None = None,
        manage_gc: bool = False,
        store: MeetingStore | None = None,
        sockets: list[socket.socket] | None = None,
        worker_index: int | None = None,
        machine: str | None = None,
        web: WebEndpoint | None = None,
    ) -> None:
        self.config = config or BeaconConfig()
        self.manage_gc = manage_gc  # see _collect_garbage; on in `python -m beacon`
        self.bundle = bundle or create_bundle()
        self.log = log if log is not None else null_logger()
        self.metrics = metrics or BeaconMetrics()
        c = self.config
        self.meetings = MeetingTable(c.max_tokens_per_connection, c.max_peers_per_token)
        # where the table lives (beacon.store): this process (default) or shared (Redis)
        self.store: MeetingStore = store if store is not None else make_store(c, self.meetings, self.log)
        # a worker of several (beacon.workers): its sockets are given, its connection IDs and
        # relay session IDs start with its index (the supervisor's BPF program steers by it)
        self.worker_index = worker_index
        self._given_sockets = {s.family: s for s in sockets or ()}
        self.machine = machine or os.urandom(6).hex()  # workers of one supervisor share it
        if worker_index is not None and hasattr(self.store, "claim_slot"):
            self.store.claim_slot(f"{self.machine}-w{worker_index}")
        self.link: RelayLink | None = None  # with a shared store: see beacon.relay_link
        self._sid_byte: int | None = worker_index
        self._remote_links: dict[str, tuple[str, Addr]] = {}  # connection elsewhere → machine, link
        self._remote_sessions: dict[int, dict[bytes, str]] = {}  # local conn → session → owner node
        self._where_asked: dict[bytes, tuple[float, int]] = {}  # session → window start, questions
        self.relay = RelayTable(
            relay_quota(c),
            **({"random": self._session_id} if worker_index is not None or self.store.shared else {}),
        )
        self._endpoints: list[Endpoint] = []
        self.tcp: TcpService | None = None  # the TLS/TCP listeners (config.tcp_enabled)
        self.web = web  # a started beacon.web.WebService: its page on the TLS/TCP listeners too
        self.stun = stun.StunResponder()  # Binding answers for browsers' ICE (beacon/stun.py)
        self._clients: dict[int, _Client] = {}
        self._ids = itertools.count(1)
        self._ip_counts = KeyedCounts()
        self._handshakes = KeyedBuckets(c.handshakes_per_second_per_ip, c.handshake_burst_per_ip)
        self._handshake_rate: RateMeter | None = None
        self._reset_token = stateless_reset.token_function(
            stateless_reset.reset_key(self.bundle.private_key.private_bytes_raw())
        )
        self._resets = TokenBucket(STATELESS_RESETS_PER_SECOND, STATELESS_RESET_BURST, 0.0)
        self.stateless_resets_sent = 0
        self.stateless_resets_limited = 0
        self._dirty: set[BeaconProtocol] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._metrics_http: MetricsHTTPServer | None = None
        self._behaviour: BehaviourResponder | None = None  # the second UDP port (behaviour_port)
        self._behaviour_transport: asyncio.BaseTransport | None = None
        self.behaviour_port: int | None = None  # bound (its number), else None
        self.metrics_address: Addr | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_full_gc = 0.0
        self._settling: collections.deque[tuple[float, BeaconProtocol]] = collections.deque()
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self.metrics.watch(self._snapshot)

    # --- public API ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The pin clients use: base64url(SHA-256(certificate DER))."""
        return self.bundle.fingerprint

    @property
    def addresses(self) -> list[Addr]:
        """Bound (host, port) of every listening socket, IPv4 first."""
        return [endpoint.local_address for endpoint in self._endpoints]

    @property
    def port(self) -> int:
        """The IPv4 port (or the first socket's)."""
        for host, port in self.addresses:
            if ":" not in host:
                return port
        return self.addresses[0][1]

    @property
    def ipv6_port(self) -> int | None:
        for host, port in self.addresses:
            if ":" in host:
                return port
        return None

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    async def __aenter__(self) -> BeaconServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the sockets (IPv4, then IPv6 if enabled and available) and start serving."""
        if self._started:
            raise RuntimeError("beacon already started")
        self._started = True
        if TRIM_AFTER_HANDSHAKE:
            quic_tuning.install()
        loop = self._loop = asyncio.get_running_loop()
        self._handshake_rate = RateMeter(loop.time())
        c = self.config
        quic_config = QuicConfiguration(
            is_client=False,
            alpn_protocols=[wire.BEACON_ALPN],
            idle_timeout=c.idle_timeout_seconds,
            # small initial windows, slid by what is consumed (quic_tuning.BeaconQuicConnection)
            max_data=quic_tuning.CONTROL_WINDOW,
            max_stream_data=quic_tuning.CONTROL_WINDOW,
            certificate=self.bundle.certificate,
            private_key=self.bundle.private_key,
        )
        try:
            await self.store.start(self)
            if self.store.shared:
                key = link_key(self.bundle.private_key)
                self.link = await RelayLink.open(c.relay_link_host, key, self._link_datagram)
            await self._listen(socket.AF_INET, c.host, c.port, quic_config)
            if c.ipv6_enabled:
                try:
                    await self._listen(socket.AF_INET6, c.ipv6_host, c.ipv6_port, quic_config)
                except OSError as exc:
                    if exc.errno not in _NO_IPV6:
                        raise
                    self.log.warning("ipv6_unavailable", host=c.ipv6_host, port=c.ipv6_port, error=str(exc))
            if c.tcp_enabled:
                await self._listen_tcp()
            if c.behaviour_enabled:
                await self._listen_behaviour()
            if c.metrics_enabled:
                self._metrics_http = MetricsHTTPServer(self.metrics)
                self.metrics_address = await self._metrics_http.start("127.0.0.1", c.metrics_port)
        except BaseException:
            await self._close_sockets()
            await self.store.stop()
            if self.link is not None:
                self.link.close()
            raise
        self._housekeeping = loop.create_task(self._housekeep())
        if self.manage_gc:
            gc.collect()
            gc.freeze()
            self._last_full_gc = loop.time()
        self.log.info(
            "beacon_started",
            fingerprint=self.fingerprint,
            addresses=[str(Address.from_socket(a)) for a in self.addresses],
            metrics=f"http://{self.metrics_address[0]}:{self.metrics_address[1]}/metrics"
            if self.metrics_address
            else None,
        )

    async def stop(self, reason: str = "beacon is shutting down") -> None:
        """Tell every client (Error SHUTTING_DOWN), close the connections, release the sockets."""
        if self._stopping or not self._started:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        told = []
        for client in list(self._clients.values()):
            if client.hello and not client.closing and not client.gone:
                self._write(client, wire.Error(code=ErrorCode.SHUTTING_DOWN, message=reason, fatal=True), check=False)
                told.append(client)
            client.closing = True
        self._flush()
        deadline = loop.time() + CLOSE_GRACE
        while loop.time() < deadline and any(not p.gone and p.protocol.unsent_bytes() for p in told):
            await asyncio.sleep(0.01)
        for client in list(self._clients.values()):
            if not client.gone:
                client.protocol.close(error_code=ErrorCode.SHUTTING_DOWN, reason_phrase=f"SHUTTING_DOWN: {reason}")
        await cancel_and_wait(self._housekeeping)
        if self.manage_gc:
            gc.unfreeze()  # hand everything back to the collector (in-process beacons)
        await self._close_sockets()
        for client in list(self._clients.values()):
            self._forget(client)
            client.protocol.cancel_timer()
        await self.store.stop()
        if self.link is not None:
            self.link.close()
        self.log.info("beacon_stopped", reason=reason)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # --- sockets ------------------------------------------------------------------------------

    async def _listen(self, family: socket.AddressFamily, host: str, port: int, quic: QuicConfiguration) -> None:
        given = self._given_sockets.get(family)
        if given is not None:
            given.setblocking(False)
            await self._serve_socket(given, quic)
            return
        if self._given_sockets:
            return  # a worker serves the families its supervisor bound, nothing else
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # separate from the IPv4 socket, which may use the same port
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            enlarge_buffers(sock, workers.SOCKET_BUFFER, workers.SOCKET_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from exc
        await self._serve_socket(sock, quic)

    async def _serve_socket(self, sock: socket.socket, quic: QuicConfiguration) -> None:
        extra: dict[str, Any] = {}
        if self.worker_index is not None:
            extra["connection_class"] = workers.steered_connection_class(
                quic_tuning.BeaconQuicConnection, self.worker_index
            )
        endpoint = _BeaconEndpoint(
            **extra,
            server_configuration=quic,
            create_server_protocol=lambda connection: BeaconProtocol(connection, self),
            admit=self._admit,
        )
        endpoint.on_datagram = functools.partial(self._relay_datagram, endpoint)
        endpoint.on_error = self._endpoint_error
        endpoint.on_unknown_connection = functools.partial(self._stateless_reset, endpoint)
        endpoint.on_stun = functools.partial(self._stun_answer, endpoint)
        endpoint.on_relay_run = functools.partial(self._relay_run, endpoint)
        # our reader: GRO runs of relay frames reach _relay_run whole, while relay sessions exist
        endpoint.serve_socket(sock, gro=self.relay.session_count > 0)
        self._endpoints.append(endpoint)

    async def _listen_tcp(self) -> None:
        """TLS/TCP on the port number of each UDP socket (any free one if that was 0 and the
        number is taken over TCP), then on the extra ports."""
        tcp = self.tcp = TcpService(self, self.bundle, self.web)
        shared = self.worker_index is not None  # every worker listens on the same TCP port
        for endpoint in self._endpoints:
            host, port = endpoint.local_address
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            wanted = self.config.port if family == socket.AF_INET else self.config.ipv6_port
            try:
                await tcp.listen(family, host, port, reuse_port=shared)
            except OSError:
                if wanted != 0:
                    raise
                await tcp.listen(family, host, 0)
            for extra in self.config.tcp_extra_ports:
                if extra != port:
                    await tcp.listen(family, host, extra, reuse_port=shared)

    @property
    def tcp_addresses(self) -> list[Addr]:
        """Bound (host, port) of every TLS/TCP listener."""
        return self.tcp.addresses if self.tcp is not None else []

    @property
    def tcp_port(self) -> int | None:
        """The TCP port serving the same addresses as :attr:`port` (the first IPv4 listener)."""
        for host, port in self.tcp_addresses:
            if ":" not in host:
                return port
        return None

    async def _listen_behaviour(self) -> None:
        """The second UDP port (NAT-behaviour requests). Its default, the main port + 1, may be
        taken on this host: then the beacon serves without it and says so; a port the owner
        chose must be free."""
        c = self.config
        port = c.behaviour_port or (self.port + 1 if c.port else 0)
        responder = BehaviourResponder(
            key=cookie_key(self.bundle.private_key.private_bytes_raw()), send_from_main=self._send_from_main
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if port > 65535:
                raise OSError(errno.EADDRNOTAVAIL, "the main port + 1 is beyond 65535")
            if self._given_sockets:  # every worker answers on it: the answer is stateless
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((c.host, port))
        except OSError as exc:
            sock.close()
            if c.behaviour_port or port == 0:
                raise OSError(exc.errno, f"cannot listen on {c.host}:{port} (behaviour_port): {exc.strerror}") from exc
            self.log.warning(
                "behaviour_port_unavailable",
                port=port,
                error=exc.strerror or str(exc),
                hint="peers with this beacon alone cannot tell their NAT's mapping; set behaviour_port to a free port",
            )
            return
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: responder, sock=sock)
        self._behaviour, self._behaviour_transport = responder, transport
        self.behaviour_port = sock.getsockname()[1]

    def _send_from_main(self, data: bytes, to: Addr) -> bool:
        """A behaviour answer sent from the main port (the filtering check; beacon/behaviour.py
        decided it may go there): from the socket of the address's family, never to that socket."""
        for endpoint in self._endpoints:
            if (":" in endpoint.local_address[0]) == (":" in to[0]):
                if _is_own_socket(endpoint, to):
                    return False
                endpoint.sendto(data, to)
                return True
        return False

    def _stun_answer(self, endpoint: Any, data: bytes, source: Any) -> None:
        reply = self.stun.answer(data, (source[0], source[1]))
        if reply is not None:
            endpoint.sendto(reply, source)

    async def _close_sockets(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        if self.tcp is not None:
            await self.tcp.close()
        if self._behaviour_transport is not None:
            self._behaviour_transport.close()
        if self._metrics_http is not None:
            await self._metrics_http.stop()
            self._metrics_http = None
        await asyncio.sleep(0)  # let the transports finish closing

    def _stateless_reset(self, endpoint: Endpoint, data: bytes, source: Addr, cid: bytes) -> None:
        """Answer a short-header packet for an unknown connection ID with a stateless reset
        (RFC 9000 §10.3): smaller than the packet, rate-limited, never to our own socket."""
        if self._stopping or not stateless_reset.should_answer(data) or _is_own_socket(endpoint, source):
            return
        size = stateless_reset.reset_size(len(data))
        if size is None:
            return
        assert self._loop is not None
        if not self._resets.take(self._loop.time()):
            self.stateless_resets_limited += 1
            return
        endpoint.sendto(stateless_reset.encode_reset(self._reset_token(cid), size), source)
        self.stateless_resets_sent += 1

    # --- admission (before any per-connection state) ------------------------------------------

    def _admit(self, addr: Addr, validated: bool) -> Admission:
        """For an Initial that decrypts (junk never gets here, see _BeaconEndpoint), carrying a
        valid Retry token or none. The per-IP handshake budget is charged only for a handshake
        that starts now: a Retry is stateless and smaller than the Initial, so asking for one
        costs a spoofed "source" nothing, and the source's budget stays its own."""
        if self._stopping:
            return Admission.REFUSE
        assert self._loop is not None and self._handshake_rate is not None
        now = self._loop.time()
        if len(self._clients) >= self.config.max_connections:
            self.metrics.handshakes_refused.labels("max_connections").inc()
            return Admission.REFUSE
        mode = self.config.retry
        if not validated and (
            mode == "always"
            or (mode == "auto" and self._handshake_rate.rate(now) > self.config.retry_threshold_handshakes_per_second)
        ):
            self.metrics.retries.inc()
            return Admission.RETRY
        if not self._handshakes.take(ip_key(addr[0]), now):
            self.metrics.handshakes_refused.labels("rate_limited").inc()
            return Admission.REFUSE
        self._handshake_rate.add(now)
        return Admission.ACCEPT

    # --- connection life ----------------------------------------------------------------------

    def _connection_started(self, protocol: Any, address: Addr) -> None:
        """A client connection began (QUIC: its first datagram; TLS/TCP: its handshake done)."""
        assert self._loop is not None
        c = self.config
        client = _Client(next(self._ids), protocol, address, c.max_frame_size)
        protocol.peer = client
        self._clients[client.key] = client
        self.metrics.connections.inc()
        try:
            client.observed = Address.from_socket(address)
        except (WireError, ValueError):
            client.refusal = ErrorCode.MALFORMED
        now = self._loop.time()
        client.frames = TokenBucket(c.frames_per_second_per_connection, c.frame_burst_per_connection, now)
        wait = c.hello_timeout_seconds if client.refusal is None else min(c.hello_timeout_seconds, 2.0)
        client.timer = self._loop.call_later(wait, self._hello_timeout, client)
        self.log.debug("connection_opened", conn=client.key, address=str(client.observed or address))

    def _handshake_completed(self, client: _Client) -> None:
        """The client proved it receives at its address: only now does it count against the
        per-IP connection limit (a handshake from a spoofed source never gets here)."""
        if client.refusal is not None or client.counted or client.closing or client.gone:
            return
        assert self._loop is not None
        if self._ip_counts.get(client.ip) >= self.config.max_connections_per_ip:
            client.refusal = ErrorCode.TOO_MANY_CONNECTIONS
            if client.timer is not None:
                client.timer.cancel()
            client.timer = self._loop.call_later(
                min(self.config.hello_timeout_seconds, 2.0), self._hello_timeout, client
            )
        else:
            self._ip_counts.add(client.ip)
            client.counted = True

    def _control_stream_lost(self, client: _Client, reason: str) -> None:
        """STOP_SENDING or RESET_STREAM on stream 0: close at once (once, one log line)."""
        if client.closing or client.gone:
            return
        self.metrics.dropped_connections.labels(reason).inc()
        self.log.debug("control_stream_lost", conn=client.key, reason=reason)
        self._leave(client)
        client.protocol.close(error_code=ErrorCode.MALFORMED, reason_phrase=f"control stream: {reason}")

    def _internal_error(self, protocol: BeaconProtocol) -> None:
        """Something unexpected escaped while handling a datagram: log it once, drop the connection."""
        client = protocol.peer
        self.metrics.dropped_connections.labels("internal_error").inc()
        self.log.exception("internal_error", conn=client.key if client is not None else None)
        if client is not None:
            self._leave(client)
            if client.gone:
                return
        with contextlib.suppress(Exception):
            protocol.close(error_code=ErrorCode.INTERNAL, reason_phrase="internal error")

    def _endpoint_error(self) -> None:
        self.metrics.dropped_connections.labels("internal_error").inc()
        self.log.exception("internal_error")

    def _hello_timeout(self, client: _Client) -> None:
        client.timer = None
        if client.hello or client.closing or client.gone:
            return
        code = client.refusal or ErrorCode.IDLE_TIMEOUT
        self._reject(client, code, "too many connections from your address" if client.refusal else "no Hello in time")

    def _connection_lost(self, client: _Client) -> None:
        if client.gone:
            return
        client.gone = True
        self._leave(client)
        self._forget(client)
        self.log.debug("connection_closed", conn=client.key)

    def _forget(self, client: _Client) -> None:
        if self._clients.pop(client.key, None) is not None and client.counted:
            self._ip_counts.remove(client.ip)
            client.counted = False
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        self._dirty.discard(client.protocol)

    def _leave(self, client: _Client) -> None:
        """Take the connection out of the meeting and relay tables (idempotent)."""
        client.closing = True
        if client.hello:
            self.store.remove(client.key)
        for ended in self.relay.drop_connection(client.key):
            self._relay_ended(ended)
        if self.link is not None:
            self._remote_relay_leave(client)

    def _reject(self, client: _Client, code: ErrorCode, message: str, *, wait: bool = True) -> None:
        """Fatal error: Error frame (if stream 0 is open), leave the tables, close after a grace."""
        if client.closing or client.gone:
            return
        self.metrics.rejections.labels(code.name.lower()).inc()
        self.log.debug("connection_rejected", conn=client.key, code=code.name, message=message)
        if client.protocol.can_send_frames():
            self._write(client, wire.Error(code=code, message=message, fatal=True), check=False)
        self._leave(client)
        reason = f"{code.name}: {message}"
        if wait:
            assert self._loop is not None
            self._close_when_flushed(client, code, reason, self._loop.time() + CLOSE_GRACE)
        else:
            client.protocol.close(error_code=code, reason_phrase=reason)

    def _close_when_flushed(self, client: _Client, code: ErrorCode, reason: str, deadline: float) -> None:
        assert self._loop is not None
        if client.gone:
            return
        if client.protocol.unsent_bytes() and self._loop.time() < deadline and not self._stopping:
            self._loop.call_later(0.02, self._close_when_flushed, client, code, reason, deadline)
            return
        client.protocol.close(error_code=code, reason_phrase=reason)

    # --- frames in ----------------------------------------------------------------------------

    def _stream_data(self, client: _Client, event: events.StreamDataReceived) -> None:
        if client.closing or event.stream_id != 0:
            return  # only stream 0 carries the protocol; other streams are ignored
        try:
            messages = client.decoder.feed(event.data)
            for message in messages:
                if client.closing:
                    return
                self._on_message(client, message)
        except WireError as exc:
            self._reject(client, exc.code, exc.message)
            return
        except Exception:
            self.log.exception("internal_error", conn=client.key)
            self._reject(client, ErrorCode.INTERNAL, "internal error")
            return
        if event.end_stream and not client.closing:
            self._leave(client)
            client.protocol.close(error_code=0, reason_phrase="stream closed")

    def _on_message(self, client: _Client, message: wire.Message) -> None:
        assert self._loop is not None and client.frames is not None
        if client.refusal is not None:
            message_text = "too many connections from your address"
            if client.refusal is ErrorCode.MALFORMED:
                message_text = "unusable source address"
            self._reject(client, client.refusal, message_text)
            return
        if not client.frames.take(self._loop.time()):
            self._reject(client, ErrorCode.RATE_LIMITED, "too many frames")
            return
        if not client.hello:
            if not isinstance(message, wire.Hello):
                self._reject(client, ErrorCode.UNEXPECTED_MESSAGE, "the first frame must be Hello")
                return
            self._on_hello(client, message)
        elif isinstance(message, wire.Announce):
            self._on_announce(client, message)
        elif isinstance(message, wire.Ping):
            self._send(client, wire.Pong(nonce=message.nonce))
        elif isinstance(message, wire.RelayRequest):
            self._on_relay_request(client, message)
        elif isinstance(message, wire.RelayEnd):
            ended = self.relay.end_by(client.key, message.session_id)
            if ended is not None:
                self._relay_ended(ended)
            elif self.link is not None:
                self._remote_relay_end(client, message.session_id)
        elif isinstance(message, (wire.Pong, wire.Error)):
            pass
        else:
            self._reject(client, ErrorCode.UNEXPECTED_MESSAGE, f"unexpected {type(message).__name__}")

    def _on_hello(self, client: _Client, hello: wire.Hello) -> None:
        if not wire.MIN_VERSION <= hello.version <= wire.PROTOCOL_VERSION:
            self._reject(
                client,
                ErrorCode.UNSUPPORTED_VERSION,
                f"version {hello.version} unsupported (this beacon speaks {wire.MIN_VERSION}..{wire.PROTOCOL_VERSION})",
            )
            return
        assert client.observed is not None
        client.hello = hello.version
        client.instance = hello.instance
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        self.store.join(client.key, hello.instance, client.observed)
        self._send(
            client,
            wire.Welcome(
                version=hello.version,
                observed=client.observed,
                max_tokens=self.config.max_tokens_per_connection,
                # the port listens on IPv4 only (a version-1 client never gets it: wire.encode)
                behaviour_port=None if ":" in unmap_host(client.address[0]) else self.behaviour_port,
            ),
        )

    def _on_announce(self, client: _Client, announce: wire.Announce) -> None:
        # introductions carry the address the peer's packets come from now (NAT rebinding moves
        # it), once QUIC validated it: never an address a spoofed packet merely named
        address = client.protocol.validated_address()
        current = Address.from_socket(address) if address is not None else client.observed
        if client.instance is not None and current is not None and current != client.observed:
            client.observed = current
            self.store.join(client.key, client.instance, current)
        try:
            if announce.mapping is not None and self.behaviour_port:
                self.store.set_mapping(client.key, announce.mapping)
            result = self.store.announce(client.key, announce.add, announce.withdraw, announce.candidates)
        except TooManyTokens as exc:
            self.metrics.rejections.labels("too_many_tokens").inc()
            self._send(client, wire.Error(code=ErrorCode.TOO_MANY_TOKENS, message=str(exc), fatal=False))
            return
        self.metrics.announces.inc()
        if result is not None:  # else a shared store calls announced() once it decided
            self.announced(client.key, result)

    # --- beacon.store.StoreHooks: what the meeting store decided --------------------------------

    def announced(self, key: Any, result: Announced) -> None:
        """Tell the announcer about full tokens and everyone about their introductions/evictions."""
        client = self._clients.get(key)
        if client is not None and result.full:
            self.metrics.rejections.labels("token_full").inc(len(result.full))
            limit = self.store.max_peers_per_token
            for token in result.full:
                text = f"token full: its {limit} places are taken and no address holds more than its share; try later"
                self._send(client, wire.Error(code=ErrorCode.TOKEN_FULL, message=wire.token_full_message(token, text)))
        for victim, token in result.evicted:
            self.evicted(victim, token)
        for target, introduction in result.introductions:
            self.introduce(target, introduction)
        if result.introductions:
            self.log.debug("introduced", conn=key, count=len(result.introductions))

    def introduce(self, key: Any, introduction: wire.Introduction) -> None:
        target = self._clients.get(key)
        if target is not None and self._send(target, introduction):
            self.metrics.introductions.inc()

    def evicted(self, key: Any, token: bytes) -> None:
        self.metrics.rejections.labels("token_evicted").inc()
        evicted = self._clients.get(key)
        if evicted is not None:
            text = "token full: your place was given to a connection from an address with fewer places"
            self._send(evicted, wire.Error(code=ErrorCode.TOKEN_FULL, message=wire.token_full_message(token, text)))

    # --- relay --------------------------------------------------------------------------------

    def _on_relay_request(self, client: _Client, request: wire.RelayRequest) -> None:
        assert self._loop is not None
        # the instance is a claim: the request reaches the connection the beacon introduced to
        # this one on that token (the first such introduction), never merely one claiming it
        targets = self.store.introduced(client.key, request.token, request.instance)
        # bound to where the peer's packets come from now once QUIC validated it (NAT rebinding
        # moves it), never to an address a packet merely came from (a spoofed copy)
        current = client.protocol.validated_address()
        if not targets or current is None:
            code = ErrorCode.RELAY_NOT_INTRODUCED if not targets else ErrorCode.RELAY_REFUSED
            message = (
                "no introduction to that instance on that token: announce the token first"
                if not targets
                else "no validated address for this connection yet"
            )
            self.metrics.relay_refusals.labels(code.name.lower()).inc()
            self._send(client, wire.Error(code=code, message=message, fatal=False))
            return
        if isinstance(targets[0], str):  # held by another worker or machine (beacon.relay_link)
            self._remote_relay_request(client, request, targets[0], current)
            return
        self._sid_byte = self.worker_index
        if self.link is not None and self._cross_machine(targets[0]):
            self._sid_byte = CROSS_MACHINE_SID_BYTE
        outcome = self.relay.request(
            client.key,
            client.instance,
            request.token,
            targets[0],
            request.instance,
            client.via,
            current,
            self._loop.time(),
        )
        self._relay_outcome(client.key, outcome)
        if outcome.refused is None and outcome.session is None and outcome.new:
            # waiting for the other peer's request: tell it, so it asks now rather than after
            # its own punching deadline (a peer whose UDP is blocked knows punching is pointless);
            # older clients ignore this frame
            target = self._clients.get(targets[0])  # type: ignore[call-overload]  # a local key here
            if target is not None:
                self._send(target, wire.RelayRequest(token=request.token, instance=client.instance))

    def _relay_outcome(self, requester: Any, outcome: Any) -> None:
        """Grant, refuse or wait, for a request of a local connection or a forwarded one."""
        self._drain_relay_endings()
        if outcome.refused is not None:
            self.metrics.relay_refusals.labels(outcome.refused.name.lower()).inc()
            self._tell_error(requester, outcome.refused, outcome.message)
            return
        session = outcome.session
        if session is None:
            return  # waiting for the other peer's request
        if not outcome.new:
            side = session.a if session.a.conn == requester else session.b
            self._grant(side, session)
            return
        self.metrics.relay_sessions.inc()
        self.log.info(
            "relay_session_started",
            session=session.session_id.hex(),
            a=str(Address.from_socket(session.a.address)),
            b=str(Address.from_socket(session.b.address)),
        )
        for side in session.sides():
            self._grant(side, session)

    def _tell_error(self, key: Any, code: ErrorCode, message: str) -> None:
        if isinstance(key, str):
            self._store_send(key, {"k": "relay_err", "code": int(code), "msg": message})
            return
        client = self._clients.get(key)
        if client is not None:
            self._send(client, wire.Error(code=code, message=message, fatal=False))

    def _grant(self, side: RelaySide, session: RelaySession) -> None:
        if isinstance(side.conn, str):  # its holder tells it (and proxies it across machines)
            assert self.link is not None
            self._store_send(
                side.conn,
                {
                    "k": "relay_grant",
                    "tok": session.token.hex(),
                    "inst": session.other(side.conn).instance.hex(),
                    "sid": session.session_id.hex(),
                    "addr": list(side.address),
                    "machine": self.machine,
                    "link": list(self.link.address),
                    "owner": self.store.node,  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store
                },
            )
            return
        client = self._clients.get(side.conn)  # type: ignore[call-overload]  # a local connection key here (another worker's keys are str)
        if client is None:
            return
        self._read_runs_while_relaying()
        q = self.relay.quota
        self._send(
            client,
            wire.RelayGrant(
                token=session.token,
                instance=session.other(side.conn).instance,
                session_id=session.session_id,
                max_bytes=q.max_bytes,
                max_seconds=q.max_seconds,
                rate_bytes_per_second=q.rate_bytes_per_second,
            ),
        )

    def _relay_datagram(self, endpoint: Any, data: bytes, source: Addr) -> None:
        """Endpoint hook for every non-QUIC datagram (and TcpClient's for relay items on its
        stream): the relay's forward path. ``endpoint`` is what it came through."""
        link = self.link
        if link is not None and link.proxies:
            proxy = link.proxies.get(data[1:RELAY_HEADER_SIZE])
            if proxy is not None:  # its session is owned on another machine: over the link
                if source == proxy.current or self._proxy_follows(proxy, source, endpoint):
                    link.send(proxy.owner_link, proxy.address, data)  # the owner's name for this side
                return
        relay = self.relay
        target = relay.route(data, source, self._loop.time(), endpoint)  # type: ignore[union-attr]  # the loop is set once the server started
        if target is None and relay.misdirected is not None:
            session, relay.misdirected = relay.misdirected, None
            if self._follow_migration(session, source):
                relay.dropped["wrong_source"] -= 1  # not dropped after all: it came from the new path
                target = relay.route(data, source, self._loop.time(), endpoint)  # type: ignore[union-attr]  # the loop is set once the server started
        if target is not None:
            target[0].sendto(data, target[1])
        elif relay.ended:
            self._drain_relay_endings()

    def _read_runs_while_relaying(self) -> None:
        """GRO reads only while this beacon forwards relay sessions: they make a relayed run of
        datagrams one read and one send (10x less CPU per relayed byte), but cost registrations
        ~3 % of CPU when nothing is relayed (measured: 0.86x vs 0.89x of bare handshakes)."""
        # Not in a worker of several: the kernel's GRO joins datagrams of one source whatever
        # their session, and the steering program sends the joined read to the worker of the
        # first one's session; another worker's frames in it would be dropped here.
        relaying = self.relay.session_count > 0 and self.worker_index is None
        for endpoint in self._endpoints:
            endpoint.read_coalesced(relaying)

    def _relay_run(self, endpoint: Any, data: bytes, segment: int, source: Addr) -> bool:
        """Endpoint hook for a run of non-QUIC datagrams read at once (UDP GRO): a relay
        session's frames from one side leave in one send to the other (UDP GSO). False: the
        endpoint hands them to :meth:`_relay_datagram` one by one (another machine's session,
        a run the relay would not forward whole)."""
        link = self.link
        if link is not None and link.proxies and data[1:RELAY_HEADER_SIZE] in link.proxies:
            return False
        target = self.relay.route_run(data, segment, source, self._loop.time(), endpoint)  # type: ignore[union-attr]  # the loop is set once the server started
        if target is None:
            return False
        via, address = target
        send_run = getattr(via, "send_run", None)
        if send_run is not None:
            send_run(data, segment, address)
        else:  # a side on TLS/TCP: its stream takes them one by one
            for offset in range(0, len(data), segment):
                via.sendto(data[offset : offset + segment], address)
        return True

    def _follow_migration(self, session: RelaySession, source: Addr) -> bool:
        """A side's beacon connection moved to ``source`` (NAT rebinding) and QUIC validated the
        new path: the session follows. Anything else from ``source`` stays dropped. A side held by
        another worker of this machine: that worker is asked (it answers ``relay_moved`` only if
        its connection validated ``source``); the datagrams that follow get through."""
        for side in session.sides():
            if isinstance(side.conn, str):
                if not isinstance(side.via, LinkVia):  # across machines the holder's proxy follows
                    self._ask_where(session.session_id, side.conn, source)
                continue
            client = self._clients.get(side.conn)  # type: ignore[call-overload]  # a local connection key here (str ones were handled above)
            if client is None or client.gone:
                continue
            if source in client.protocol.validated_paths():
                self.relay.rebind(session, side.conn, source)
                return True
        return False

    def _ask_where(self, session_id: bytes, holder: str, source: Addr) -> None:
        """At most 4 questions per session per second, whatever sprays datagrams at it."""
        assert self._loop is not None
        now = self._loop.time()
        start, count = self._where_asked.get(session_id, (now, 0))
        if now - start >= 1.0:
            start, count = now, 0
        if count >= 4:
            return
        if len(self._where_asked) > 2 * self.relay.quota.max_sessions:
            self._where_asked.clear()
        self._where_asked[session_id] = (start, count + 1)
        message = {"k": "relay_where", "sid": session_id.hex(), "addr": list(source), "owner": self.store.node}  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store
        self._store_send(holder, message)

    def _proxy_follows(self, proxy: Proxy, source: Addr, endpoint: Any) -> bool:
        """The peer of a session owned on another machine moved to ``source`` (NAT rebinding) and
        its connection here validated that path: the proxy sends there and accepts from there."""
        client = self._clients.get(proxy.key)
        if (
            client is None
            or client.gone
            or endpoint is not proxy.via
            or source not in client.protocol.validated_paths()
        ):
            return False
        proxy.current = source
        return True

    def _drain_relay_endings(self) -> None:
        while self.relay.ended:
            self._relay_ended(self.relay.ended.pop())

    def _relay_ended(self, ended: RelayEnded) -> None:
        self.metrics.relay_ended.labels(ended.code.name.lower()).inc()
        self.log.info(
            "relay_session_ended",
            session=ended.session.session_id.hex(),
            code=ended.code.name,
            bytes=ended.session.bytes,
        )
        for side in ended.notify:
            if isinstance(side.conn, str):
                self._store_send(
                    side.conn,
                    {
                        "k": "relay_end",
                        "sid": ended.session.session_id.hex(),
                        "code": int(ended.code),
                        "msg": ended.message,
                    },
                )
                continue
            client = self._clients.get(side.conn)  # type: ignore[call-overload]  # a local connection key here (another worker's keys are str)
            if client is not None:
                self._send(
                    client, wire.RelayEnd(session_id=ended.session.session_id, code=ended.code, message=ended.message)
                )

    # --- relay across workers and machines (shared store; see beacon.relay_link) ---------------

    def _session_id(self, size: int) -> bytes:
        """Relay session IDs: the first byte steers (this worker's index, or 0xFF across machines)."""
        first = self._sid_byte if self._sid_byte is not None else os.urandom(1)[0]
        return bytes([first]) + os.urandom(size - 1)

    def _store_send(self, to: str, message: dict[str, Any]) -> None:
        self.store.send(to, message)  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store

    def _cross_machine(self, conn: Any) -> bool:
        known = self._remote_links.get(conn) if isinstance(conn, str) else None
        return known is not None and known[0] != self.machine

    def _endpoint_for(self, address: Addr) -> Endpoint:
        v6 = ":" in address[0]
        for endpoint in self._endpoints:
            if (":" in endpoint.local_address[0]) == v6:
                return endpoint
        return self._endpoints[0]

    def _remote_relay_request(self, client: _Client, request: wire.RelayRequest, target: str, current: Addr) -> None:
        """The partner is held elsewhere: the worker with the smaller node id owns the session."""
        assert self._loop is not None and self.link is not None
        me = self.store.gkey(client.key)  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store
        if self.store.node < target.rpartition(":")[0]:  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store
            self._sid_byte = CROSS_MACHINE_SID_BYTE if self._cross_machine(target) else self.worker_index
            outcome = self.relay.request(
                client.key,
                client.instance,
                request.token,
                target,
                request.instance,
                client.via,
                current,
                self._loop.time(),
            )
            self._relay_outcome(client.key, outcome)
            return
        self._store_send(
            target,
            {
                "k": "relay_req",
                "from": me,
                "tok": request.token.hex(),
                "inst": client.instance.hex(),
                "target_inst": request.instance.hex(),
                "addr": list(current),
                "machine": self.machine,
                "link": list(self.link.address),
            },
        )

    def relay_message(self, key: Any, message: dict[str, Any]) -> None:
        """beacon.store.StoreHooks: a relay message from another worker (``key``: the local
        connection it is about, None for one addressed to this worker)."""
        assert self._loop is not None and self.link is not None
        kind = message["k"]
        if kind == "relay_req" and key is not None:
            sender, token = message["from"], bytes.fromhex(message["tok"])
            instance, address = bytes.fromhex(message["inst"]), (message["addr"][0], int(message["addr"][1]))
            client = self._clients.get(key)
            if client is None or client.closing or bytes.fromhex(message["target_inst"]) != client.instance:
                self._tell_error(sender, ErrorCode.RELAY_REFUSED, "the other peer left the beacon")
                return
            if sender not in self.store.introduced(key, token, instance):
                self.metrics.relay_refusals.labels("relay_not_introduced").inc()
                text = "no introduction to that instance on that token"
                self._tell_error(sender, ErrorCode.RELAY_NOT_INTRODUCED, text)
                return
            link = (message["link"][0], int(message["link"][1]))
            self._remote_links[sender] = (message["machine"], link)
            q = self.relay.quota
            while len(self._remote_links) > q.max_pending + 2 * q.max_sessions:  # bounded: oldest go first
                del self._remote_links[next(iter(self._remote_links))]
            same = message["machine"] == self.machine
            via: Any = self._endpoint_for(address) if same else LinkVia(self.link, link)
            self._sid_byte = self.worker_index if same else CROSS_MACHINE_SID_BYTE
            outcome = self.relay.request(sender, instance, token, key, client.instance, via, address, self._loop.time())
            self._relay_outcome(sender, outcome)
        elif kind == "relay_grant" and key is not None:
            client = self._clients.get(key)
            if client is None or client.closing:
                return
            sid = bytes.fromhex(message["sid"])
            self._remote_sessions.setdefault(key, {})[sid] = message["owner"]
            if message["machine"] != self.machine:
                owner_link = (message["link"][0], int(message["link"][1]))
                self.link.proxies[sid] = Proxy(
                    key, (message["addr"][0], int(message["addr"][1])), owner_link, client.via
                )
            q = self.relay.quota
            self._send(
                client,
                wire.RelayGrant(
                    token=bytes.fromhex(message["tok"]),
                    instance=bytes.fromhex(message["inst"]),
                    session_id=sid,
                    max_bytes=q.max_bytes,
                    max_seconds=q.max_seconds,
                    rate_bytes_per_second=q.rate_bytes_per_second,
                ),
            )
        elif kind in ("relay_err", "relay_end") and key is not None:
            client = self._clients.get(key)
            code = ErrorCode(message["code"])
            if kind == "relay_end":
                sid = bytes.fromhex(message["sid"])
                self.link.proxies.pop(sid, None)
                self._remote_sessions.get(key, {}).pop(sid, None)
                if client is not None:
                    self._send(client, wire.RelayEnd(session_id=sid, code=code, message=message["msg"]))
            elif client is not None:
                self.metrics.relay_refusals.labels(code.name.lower()).inc()
                self._send(client, wire.Error(code=code, message=message["msg"], fatal=False))
        elif kind == "relay_where" and key is not None:
            # the owner saw this session's datagrams from a new address: is it our peer's?
            client = self._clients.get(key)
            address = (message["addr"][0], int(message["addr"][1]))
            if client is not None and not client.gone and address in client.protocol.validated_paths():
                moved = {"k": "relay_moved", "sid": message["sid"], "from": self.store.gkey(key), "addr": list(address)}  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store
                self._store_send(f"{message['owner']}:", moved)
        elif kind == "relay_moved":
            session = self.relay.session(bytes.fromhex(message["sid"]))
            if session is not None:  # rebind moves only the side held by the worker that answered
                self.relay.rebind(session, message["from"], (message["addr"][0], int(message["addr"][1])))
        elif kind == "relay_end_by":
            ended = self.relay.end_by(message["from"], bytes.fromhex(message["sid"]))
            if ended is not None:
                self._relay_ended(ended)
        elif kind == "relay_gone":
            for ended in self.relay.drop_connection(message["from"]):
                self._relay_ended(ended)
            self._remote_links.pop(message["from"], None)

    def _remote_relay_end(self, client: _Client, session_id: bytes) -> None:
        owner = self._remote_sessions.get(client.key, {}).pop(session_id, None)
        if owner is not None and self.link is not None:
            self.link.proxies.pop(session_id, None)
            me = self.store.gkey(client.key)  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store
            self._store_send(f"{owner}:", {"k": "relay_end_by", "from": me, "sid": session_id.hex()})

    def _remote_relay_leave(self, client: _Client) -> None:
        sessions = self._remote_sessions.pop(client.key, {})
        assert self.link is not None
        for sid in sessions:
            self.link.proxies.pop(sid, None)
        for owner in set(sessions.values()):
            self._store_send(f"{owner}:", {"k": "relay_gone", "from": self.store.gkey(client.key)})  # type: ignore[attr-defined]  # RedisStore only: this path runs with a shared store

    def _link_datagram(self, source: Addr, address: Addr, data: bytes) -> None:
        """An authentic datagram on the relay link: to our peer (we hold it, the owner sent it)
        or from a peer on another machine (we own its session)."""
        assert self.link is not None and self._loop is not None
        proxy = self.link.proxies.get(data[1:RELAY_HEADER_SIZE])
        if proxy is not None:
            if address == proxy.address and source == proxy.owner_link:
                proxy.via.sendto(data, proxy.current)
            return
        target = self.relay.route(data, address, self._loop.time())
        if target is not None:
            target[0].sendto(data, target[1])
        elif self.relay.ended:
            self._drain_relay_endings()

    # --- frames out ---------------------------------------------------------------------------

    def _send(self, client: _Client, message: wire.Message) -> bool:
        """Queue ``message`` to ``peer``; False if it is closing or was just dropped as slow."""
        if client.closing or client.gone:
            return False
        return self._write(client, message, check=True)

    def _write(self, client: _Client, message: wire.Message, *, check: bool) -> bool:
        link = client.protocol
        try:
            # in the client's protocol version (before its Hello: the lowest we speak)
            link.send_frame(wire.encode(message, client.hello or wire.MIN_VERSION))
        except (ValueError, AssertionError, RuntimeError) as exc:  # stream 0 finished, or reset by the client
            self.log.debug("write_failed", conn=client.key, error=str(exc))
            if check:
                self._leave(client)
                client.protocol.close(error_code=ErrorCode.MALFORMED, reason_phrase="stream 0 is closed")
            return False
        self._dirty.add(client.protocol)
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)
        if check and link.unsent_bytes() > self.config.max_unsent_bytes:
            self._reject(client, ErrorCode.SLOW_READER, "you do not read fast enough", wait=False)
            return False
        return True

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, set()
        for protocol in dirty:
            protocol.transmit()

    # --- housekeeping -------------------------------------------------------------------------

    async def _housekeep(self) -> None:
        assert self._loop is not None
        ticks = 0
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                now = self._loop.time()
                for ended in self.relay.expire(now):
                    self._relay_ended(ended)
                self._read_runs_while_relaying()  # off again once the last session ended
                for pending in self.relay.expire_pending(now):
                    client = self._clients.get(pending.conn)  # type: ignore[call-overload]  # a local connection key here (another worker's keys are str)
                    if client is not None:
                        self.metrics.relay_refusals.labels("expired").inc()
                        self._send(
                            client,
                            wire.Error(
                                code=ErrorCode.RELAY_REFUSED,
                                message="relay request expired: the other peer did not ask",
                                fatal=False,
                            ),
                        )
                ticks += 1
                if ticks % 30 == 0:
                    self._handshakes.prune(now)
                settling = self._settling
                while settling and settling[0][0] <= now:
                    protocol = settling.popleft()[1]
                    if not protocol.dead and protocol.peer is not None and not protocol.peer.gone:
                        quic_tuning.release_ciphers(protocol.quic)
                if self.manage_gc:
                    self._collect_garbage(now)
            except Exception:
                self.log.exception("housekeeping_failed")

    def _collect_garbage(self, now: float) -> None:
        """Keep Python's cyclic garbage collector off the long-lived objects.

        10,000 registered peers are ~2 million GC-tracked objects (aioquic keeps ~200 per
        connection); a full collection walks all of them and stops the event loop for ~1 s
        (measured), and churn triggers one every few seconds. Every second, everything alive is
        moved to the permanent generation (``gc.freeze``, O(1)), so collections only look at
        objects younger than a second. Terminated connections are dismantled
        (:func:`beacon.quic_tuning.dismantle`), so reference counting frees them even when
        they were frozen. Whatever else would leak that way is swept by one full collection
        every ``GC_FULL_INTERVAL`` seconds (logged with its duration)."""
        if now - self._last_full_gc >= GC_FULL_INTERVAL:
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            self._last_full_gc = now
            self.log.info("full_gc", collected=found, ms=round(1000 * (time.perf_counter() - started), 1))
        else:
            gc.freeze()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "beacon_open_connections": len(self._clients),
            "beacon_tcp_open_connections": sum(1 for p in self._clients.values() if p.via is p.protocol),
            "beacon_tcp_handshakes_in_progress": self.tcp.handshaking if self.tcp is not None else 0,
            "beacon_tcp_web_connections": self.tcp.web_connections if self.tcp is not None else 0,
            "beacon_tcp_relay_backlog_drops": self.tcp.relay_backlog_drops if self.tcp is not None else 0,
            **self.store.snapshot(),
            "beacon_relay_active_sessions": self.relay.session_count,
            "beacon_relay_pending_requests": self.relay.pending_count,
            "beacon_relay_bytes": self.relay.forwarded_bytes,
            "beacon_relay_datagrams": self.relay.forwarded_datagrams,
            "beacon_relay_runs": self.relay.forwarded_runs,
            "beacon_relay_dropped_datagrams": dict(self.relay.dropped),
            "beacon_handshake_dropped_datagrams": {
                "undecryptable": sum(getattr(e, "junk_initials", 0) for e in self._endpoints),
                "queue_full": sum(getattr(e, "handshake_datagrams_dropped", 0) for e in self._endpoints),
            },
            "beacon_stateless_resets": {
                "sent": self.stateless_resets_sent,
                "rate_limited": self.stateless_resets_limited,
            },
        }
