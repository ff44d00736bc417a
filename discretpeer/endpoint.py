"""One UDP socket carrying QUIC servers, QUIC clients and non-QUIC datagrams.

The NAT mapping the beacon observes must be the one the other peer aims at, so a peer's beacon
connections, punch probes and peer connections all share this socket. Routing follows aioquic's
``QuicServer.datagram_received``: QUIC packets by destination connection id, a new Initial creates
a server connection (after an admission decision), and datagrams whose first byte lacks the QUIC
fixed bit go to ``on_datagram`` (punch probes, relay frames).

The beacon uses the same class: admission control (per-IP limits) and Retry on demand live here,
before any per-connection state is allocated.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from discretpeer.paths import Route, RouteTable, is_virtual
from discretpeer.probe import QUIC_FIXED_BIT
from discretpeer.stateless_reset import is_reset

SocketAddress = tuple[Any, ...]
SMALLEST_INITIAL = 1200
CONNECTION_ID_LENGTH = 8


class Admission(enum.Enum):
    ACCEPT = "accept"  # create a connection now
    RETRY = "retry"  # ask for address validation first (only if the Initial has no token)
    REFUSE = "refuse"  # drop the Initial silently


def normalize_address(addr: SocketAddress) -> tuple[str, int]:
    """(host, port) with IPv4-mapped IPv6 turned into IPv4 and flowinfo dropped (scope kept)."""
    host, port = addr[0], addr[1]
    if ":" in host and "%" not in host:
        ip = ipaddress.IPv6Address(host)
        if ip.ipv4_mapped is not None:
            return (str(ip.ipv4_mapped), port)
        if len(addr) >= 4 and addr[3]:
            return (f"{host}%{addr[3]}", port)
    return (host, port)


def _batches_reads(loop: asyncio.AbstractEventLoop) -> bool:
    """True for event loops that deliver several ready datagrams per wakeup (uvloop)."""
    return type(loop).__module__.startswith("uvloop")


class EndpointProtocol(QuicConnectionProtocol):
    """A QUIC connection living on an :class:`Endpoint`; keeps the endpoint's routing table right."""

    endpoint: Endpoint | None = None
    routed_cids: set[bytes] | None = None
    route: Route | None = None  # with virtual paths: how this connection's packets travel
    last_received: float = 0.0  # loop time of the last datagram for this connection
    coalesce_transmits = True  # see datagram_received; off where latency beats CPU (the beacon)
    reset_received = False  # the other side answered with a stateless reset (RFC 9000 §10.3)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # aioquic transmits after every datagram: a bulk receiver then builds an ACK and runs a
        # full datagrams_to_send() per packet. uvloop hands over all datagrams waiting in the
        # socket in one go; one transmit after them acknowledges them together. (asyncio's own
        # loop reads one datagram per iteration: there, deferring only adds an iteration.)
        self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]
        self._process_events()
        if self.coalesce_transmits and _batches_reads(self._loop):
            self._transmit_soon()
        else:
            self.transmit()

    def reset_tokens(self) -> list[bytes]:
        """The stateless reset tokens the other side gave for its connection IDs (in use and spare)."""
        quic = self._quic
        current = getattr(quic, "_peer_cid", None)  # aioquic has no public accessor
        spare = getattr(quic, "_peer_cid_available", ())
        tokens = [c.stateless_reset_token for c in (current, *spare) if c is not None]
        return [t for t in tokens if t]

    def stateless_reset(self) -> None:
        """A stateless reset for this connection arrived: it is over, without sending anything
        (RFC 9000 §10.3.1). aioquic 1.7.2 does not detect resets itself: end it as its idle
        timer would, with its own close procedure."""
        quic = self._quic
        if self.reset_received or quic._close_event is not None and quic._close_at is None:  # noqa: SLF001
            return
        self.reset_received = True
        quic._close_event = events.ConnectionTerminated(  # noqa: SLF001
            error_code=0, frame_type=None, reason_phrase="stateless reset"
        )
        quic._close_end()  # noqa: SLF001 - discards the keys, TERMINATED, queues the event
        self._process_events()
        self.transmit()  # sends nothing once terminated; cancels the timer

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            # aioquic records the handshake only for a waiter already waiting; uvloop runs I/O
            # callbacks before a new task's first step, so wait_for(wait_connected()) right after
            # connect() missed it and hung until its timeout (BeaconClient: 5 s, often under uvloop)
            self._connected = True
        endpoint = self.endpoint
        if endpoint is not None:
            if isinstance(event, events.ConnectionIdIssued):
                endpoint._register(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                endpoint._unregister(event.connection_id, self)
            elif isinstance(event, events.ConnectionTerminated):
                endpoint._forget(self)
        super().quic_event_received(event)


class _Sender:
    """What each connection sees as its transport: every send goes through the endpoint."""

    __slots__ = ("_endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def sendto(self, data: bytes, addr: SocketAddress) -> None:
        self._endpoint.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._endpoint.get_extra_info(name, default)

    def close(self) -> None:  # connections never close the shared socket
        pass


class Endpoint(asyncio.DatagramProtocol):
    """Owns one UDP socket. Create with :meth:`open`."""

    def __init__(
        self,
        *,
        server_configuration: QuicConfiguration | None = None,
        create_server_protocol: Callable[[QuicConnection], EndpointProtocol] | None = None,
        admit: Callable[[tuple[str, int], bool], Admission] | None = None,  # (source, validated)
        on_datagram: Callable[[bytes, tuple[str, int]], None] | None = None,
        virtual_paths: bool = False,
        on_unexpected_source: Callable[[EndpointProtocol, tuple[str, int]], None] | None = None,
        connection_class: type[QuicConnection] = QuicConnection,
    ) -> None:
        """``virtual_paths``: bind each connection to a virtual address whose :class:`Route` the
        owner may switch (direct ↔ relay, NAT rebinding) without QUIC noticing. Then
        ``on_unexpected_source`` hears of packets for a connection arriving from an address
        other than its route's; the route only changes when the owner says so."""
        self._server_configuration = server_configuration
        self._create_server_protocol = create_server_protocol
        self._admit = admit
        self.on_datagram = on_datagram
        self._routes: dict[bytes, EndpointProtocol] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._sender = _Sender(self)
        self._retry = QuicRetryTokenHandler()
        self._dual_stack = False
        self._closed = False
        self.virtual_paths = virtual_paths
        self._connection_class = connection_class
        self.routes = RouteTable()
        self.on_unexpected_source = on_unexpected_source
        self._clients: set[EndpointProtocol] = set()  # outgoing connections (stateless resets)
        # real address → another socket's send: a birthday hit (discretpeer/birthday_io.py) is a
        # NAT mapping that only that socket has; everything for that address goes through it
        self.via: dict[tuple[str, int], Callable[[bytes], None]] = {}
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.send_errors = 0

    # --- life cycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, host: str | None = None, port: int = 0, *, sock: socket.socket | None = None, **kwargs: Any
    ) -> Endpoint:
        """Bind a socket (or adopt ``sock``, already bound). ``host=None`` binds dual-stack ``::``
        where IPv6 exists, else 0.0.0.0."""
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = _make_socket(host, port)
        else:
            sock.setblocking(False)
        endpoint = cls(**kwargs)
        endpoint._dual_stack = sock.family == socket.AF_INET6 and not sock.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        """Close every connection (with a CONNECTION_CLOSE) and the socket."""
        if self._closed:
            return
        self._closed = True
        for protocol in list(set(self._routes.values())):
            try:
                protocol.close()
            except Exception:  # noqa: BLE001 - closing must go on for the others
                pass
        self._routes.clear()
        self._clients.clear()
        if self._transport is not None:
            self._transport.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default) if self._transport else default

    @property
    def local_address(self) -> tuple[str, int]:
        sockname = self.get_extra_info("sockname")
        return (sockname[0], sockname[1])

    @property
    def port(self) -> int:
        return self.local_address[1]

    @property
    def connections(self) -> set[EndpointProtocol]:
        return set(self._routes.values())

    # --- sending ------------------------------------------------------------------------------

    def sendto(self, data: bytes, addr: SocketAddress) -> None:
        if self._transport is None or self._closed:
            return
        if is_virtual(addr):
            route = self.routes.get((addr[0], addr[1]))
            wrapped = route.wrap(data) if route is not None else None
            if wrapped is None:
                self.send_errors += 1
                return
            data, addr = wrapped
        host, port = addr[0], addr[1]
        if self.via:
            through = self.via.get((host, port))
            if through is not None:
                through(data)
                self.datagrams_sent += 1
                return
        if self._dual_stack and ":" not in host:
            host = "::ffff:" + host
        try:
            self._transport.sendto(data, (host, port))
            self.datagrams_sent += 1
        except (OSError, ValueError):
            self.send_errors += 1

    def connect(
        self,
        addr: tuple[str, int],
        configuration: QuicConfiguration,
        create_protocol: Callable[[QuicConnection], EndpointProtocol] = EndpointProtocol,
        *,
        route: Route | None = None,
    ) -> EndpointProtocol:
        """Start an outgoing QUIC connection from this socket; await ``wait_connected()`` on it.
        With virtual paths, ``route`` (default: a new direct route to ``addr``) carries it."""
        if self._closed:
            raise ConnectionError("endpoint is closed")
        connection = self._connection_class(configuration=configuration)
        protocol = create_protocol(connection)
        self._attach(protocol)
        self._register(connection.host_cid, protocol)
        self._clients.add(protocol)
        if self.virtual_paths:
            if route is not None:
                self.routes.keep(route)
            protocol.route = route or self.routes.new(direct=addr)
            protocol.connect(protocol.route.virtual)
        else:
            protocol.connect(addr)
        return protocol

    def inject(self, data: bytes, route: Route) -> None:
        """Deliver a QUIC datagram that arrived over ``route``'s relay (unwrapped by the owner)."""
        if data and data[0] & QUIC_FIXED_BIT:
            self._receive_quic(data, route.virtual, route)

    # --- receiving ----------------------------------------------------------------------------

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable while punching) are normal; QUIC times out by itself.
        pass

    def datagram_received(self, data: bytes, addr: SocketAddress) -> None:  # type: ignore[override]
        self.datagrams_received += 1
        if not data:
            return
        source = normalize_address(addr)
        if not data[0] & QUIC_FIXED_BIT:
            if self.on_datagram is not None:
                self.on_datagram(data, source)
            return
        self._receive_quic(data, source, None)

    def _receive_quic(self, data: bytes, source: tuple[str, int], relay_route: Route | None) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return
        protocol = self._routes.get(header.destination_cid)
        if protocol is None:
            # a stateless reset carries no connection ID of ours: its last 16 bytes tell
            if self._clients and self._stateless_reset(data):
                return
            protocol = self._maybe_accept(data, source, header, relay_route)
            if protocol is None:
                return
        if self.virtual_paths and protocol.route is not None:
            route = protocol.route
            # a relayed packet after we moved to a direct route is simply late: not news
            if relay_route is None and source != route.direct and self.on_unexpected_source is not None:
                self.on_unexpected_source(protocol, source)
            source = route.virtual
        protocol.last_received = asyncio.get_running_loop().time()
        protocol.datagram_received(data, source)

    def _maybe_accept(
        self, data: bytes, source: tuple[str, int], header: Any, relay_route: Route | None = None
    ) -> EndpointProtocol | None:
        config = self._server_configuration
        if config is None or self._create_server_protocol is None or self._closed:
            return None
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in config.supported_versions
        ):
            # never answer a version negotiation with another (reflection loops), nor a datagram
            # smaller than the smallest Initial: that would send more than was received
            # (RFC 9000 §5.2.2: such packets are dropped)
            if len(data) < SMALLEST_INITIAL:
                return None
            self.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=config.supported_versions,
                ),
                source,
            )
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_INITIAL:
            return None
        original_dcid: bytes | None = header.destination_cid
        retry_scid: bytes | None = None
        decision = Admission.ACCEPT
        if header.token:
            try:
                original_dcid = self._retry.validate_token(
                    address=source,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=asyncio.get_running_loop().time(),
                )
                retry_scid = header.destination_cid
            except ValueError:
                # a token we did not make (or expired): validate again (a stateless Retry)
                decision = Admission.RETRY
        if decision is Admission.ACCEPT and self._admit is not None:
            # admit() hears whether the source proved it receives (a valid Retry token)
            decision = self._admit(source, retry_scid is not None)
            if decision is Admission.REFUSE:
                return None
        if decision is Admission.RETRY and retry_scid is None:
            source_cid = os.urandom(CONNECTION_ID_LENGTH)
            self.sendto(
                encode_quic_retry(
                    version=header.version,
                    source_cid=source_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=self._retry.create_token(
                        address=source,
                        original_destination_connection_id=header.destination_cid,
                        retry_source_connection_id=source_cid,
                        now=asyncio.get_running_loop().time(),
                    ),
                ),
                source,
            )
            return None
        connection = self._connection_class(
            configuration=config,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        protocol = self._create_server_protocol(connection)
        if self.virtual_paths:
            if relay_route is not None:
                self.routes.keep(relay_route)
            protocol.route = relay_route or self.routes.new(direct=source)
        self._attach(protocol)
        self._register(header.destination_cid, protocol)
        self._register(connection.host_cid, protocol)
        return protocol

    def _stateless_reset(self, data: bytes) -> bool:
        """End the outgoing connection ``data`` resets, if any (they are few: beacon connections
        and peer connections this side opened)."""
        if _is_long_header(data):
            return False
        for protocol in list(self._clients):
            if is_reset(data, protocol.reset_tokens()):
                protocol.stateless_reset()
                return True
        return False

    # --- routing table ------------------------------------------------------------------------

    def _attach(self, protocol: EndpointProtocol) -> None:
        protocol.endpoint = self
        protocol.connection_made(self._sender)  # type: ignore[arg-type]

    def _register(self, cid: bytes, protocol: EndpointProtocol) -> None:
        if not self._closed:
            self._routes[cid] = protocol
            if protocol.routed_cids is None:
                protocol.routed_cids = set()
            protocol.routed_cids.add(cid)

    def _unregister(self, cid: bytes, protocol: EndpointProtocol) -> None:
        if self._routes.get(cid) is protocol:
            del self._routes[cid]
        if protocol.routed_cids is not None:
            protocol.routed_cids.discard(cid)

    def _forget(self, protocol: EndpointProtocol) -> None:
        for cid in protocol.routed_cids or ():
            if self._routes.get(cid) is protocol:
                del self._routes[cid]
        protocol.routed_cids = None
        self._clients.discard(protocol)
        route = protocol.route
        # a relay route is shared by the attempts of one pair: it goes with the last of them
        if route is not None and not any(other.route is route for other in self._routes.values()):
            self.routes.drop(route)


def _is_long_header(data: bytes) -> bool:
    return bool(data) and bool(data[0] & 0x80)


def _make_socket(host: str | None, port: int) -> socket.socket:
    if host is None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port))
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
    # room for bursts of small QUIC packets while the loop is busy
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        except OSError:
            pass
    sock.setblocking(False)
    return sock
