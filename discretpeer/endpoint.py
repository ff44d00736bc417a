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
import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

from discretpeer._aioquic import QuicProtocol
from discretpeer.addresses import Addr, SocketAddress
from discretpeer.connection_ids import ConnectionIds
from discretpeer.initial_gate import CONNECTION_ID_LENGTH, SMALLEST_INITIAL, Accept, Admission, InitialGate
from discretpeer.logs import get_logger
from discretpeer.paths import Route, RouteTable, is_virtual
from discretpeer.proto.probe import QUIC_FIXED_BIT
from discretpeer.proto.relay_frame import RELAY_DATA
from discretpeer.quic_stack import connection_class_for
from discretpeer.stateless_reset import is_reset
from discretpeer.tuning import DEFAULT_TUNING, Tuning
from discretpeer.udp_transport import SendingTransport

log = get_logger("discretpeer.endpoint")

__all__ = ["CONNECTION_ID_LENGTH", "SMALLEST_INITIAL", "Admission", "Endpoint", "EndpointProtocol"]


def normalize_address(addr: SocketAddress) -> Addr:
    """(host, port) with IPv4-mapped IPv6 turned into IPv4 and flowinfo dropped (scope kept).

    Called for every datagram from a dual-stack socket: the kernel writes an IPv4-mapped source
    as ``::ffff:a.b.c.d`` and any other IPv6 source never in that form, so a string test decides
    (parsing with ipaddress cost 6-14 us per datagram, ~12 % of a bulk receiver's time)."""
    host, port = addr[0], addr[1]
    if ":" in host and "%" not in host:
        rest = host[7:]
        if host[:7].lower() == "::ffff:" and ":" not in rest and rest.count(".") == 3:
            return (rest, port)
        if len(addr) >= 4 and addr[3]:
            return (f"{host}%{addr[3]}", port)
    return (host, port)


def _batches_reads(loop: asyncio.AbstractEventLoop) -> bool:
    """True for event loops that deliver several ready datagrams per wakeup (uvloop)."""
    return type(loop).__module__.startswith("uvloop")


READ_BATCH = 64  # datagrams read per wakeup on asyncio's own loop (see Endpoint._read_ready)
MAX_DATAGRAM = 65535
# Linux UDP segmentation offload: one sendmsg() carries up to 64 equal-sized datagrams (GSO), one
# recvmsg() returns several coalesced ones (GRO). Python 3.11 lacks the names.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # one IP packet's worth (the kernel refuses a payload over 64 KB)
# measured on loopback: GSO saves a syscall per 1472-byte datagram (+15 % per CPU-second) but
# costs ~40 % with 16,000-byte ones (few segments per send, the kernel's segmentation dominates)
GSO_MAX_SEGMENT = 4096
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)


class EndpointProtocol(QuicProtocol):
    """A QUIC connection living on an :class:`Endpoint`; keeps the endpoint's routing table right.

    The endpoint sets ``defer_transmits`` when it attaches the protocol: reads then arrive in
    batches (uvloop, or our own batched reader on asyncio's loop), and one transmit after the
    batch acknowledges them together (see :class:`discretpeer._aioquic.QuicProtocol`)."""

    endpoint: Endpoint | None = None
    routed_cids: set[bytes] | None = None
    route: Route | None = None  # with virtual paths: how this connection's packets travel
    last_received: float = 0.0  # loop time of the last datagram for this connection
    takes_coalesced = False  # its connection takes a GRO read whole (coalesced_received)
    _batch: tuple[list[bytes], Any] | None = None  # datagrams read in this loop iteration, their source

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.takes_coalesced = hasattr(self.quic, "receive_gro_buffer")

    @property
    def batches_reads(self) -> bool:
        """Datagrams read in one loop iteration go into qh3's core in one call (see _batch_from)."""
        return self.takes_coalesced and self.defer_transmits and self.coalesce_transmits

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.batches_reads:
            super().datagram_received(data, addr)
            return
        self._batch_from(addr).append(data)  # type: ignore[arg-type]  # datagrams are bytes

    def _batch_from(self, addr: Any) -> list[bytes]:
        """The datagrams from ``addr`` read in this loop iteration: reads arrive in batches
        (uvloop, our batched reader), and qh3 takes a batch in one call (receive_many_datagrams)
        after the loop's I/O callbacks, then transmits once. Another source ends the batch."""
        batch = self._batch
        if batch is not None and batch[1] != addr:
            self._take_batch()
            batch = None
        if batch is None:
            batch = self._batch = ([], addr)
            self.loop.call_soon(self._take_batch)
        return batch[0]

    def _take_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        self.quic.receive_many_datagrams(batch[0], batch[1], self.loop.time())  # type: ignore[attr-defined]  # takes_coalesced says it has it
        self.process_events()
        self.transmit()

    def many_received(self, datagrams: list[bytes], addr: Addr) -> None:
        """Several datagrams from ``addr`` that arrived together (the relay frames of one GRO
        read): into the connection's batch at once, else one by one."""
        if not self.batches_reads:
            for data in datagrams:
                self.datagram_received(data, addr)
            return
        self._batch_from(addr).extend(datagrams)

    def coalesced_received(self, data: bytes, segment: int, addr: Addr) -> None:
        """Several datagrams of ``segment`` bytes (the last may be shorter) from ``addr``, as one
        GRO read: into the connection in one call, then one transmit as after a batch."""
        if self._batch is not None:
            self._take_batch()  # in the order they arrived
        self.quic.receive_gro_buffer(data, segment, addr, self.loop.time())  # type: ignore[attr-defined]  # takes_coalesced says it has it
        self.process_events()
        if self.coalesce_transmits and self.defer_transmits:
            self.transmit_soon()
        else:
            self.transmit()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self.mark_connected()
        endpoint = self.endpoint
        if endpoint is not None:
            if isinstance(event, events.ConnectionIdIssued):
                endpoint.connection_ids.register(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                endpoint.connection_ids.unregister(event.connection_id, self)
            elif isinstance(event, events.ConnectionTerminated):
                endpoint.forget(self)
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
        admit: Callable[[Addr, bool], Admission] | None = None,  # (source, validated)
        on_datagram: Callable[[bytes, Addr], None] | None = None,
        virtual_paths: bool = False,
        on_unexpected_source: Callable[[EndpointProtocol, Addr], None] | None = None,
        connection_class: type[QuicConnection] = QuicConnection,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        """``virtual_paths``: bind each connection to a virtual address whose :class:`Route` the
        owner may switch (direct ↔ relay, NAT rebinding) without QUIC noticing. Then
        ``on_unexpected_source`` hears of packets for a connection arriving from an address
        other than its route's; the route only changes when the owner says so."""
        self._server_configuration = server_configuration
        self._create_server_protocol = create_server_protocol
        self._gate = InitialGate(admit)
        self.on_datagram = on_datagram
        self.connection_ids: ConnectionIds[EndpointProtocol] = ConnectionIds()
        self._routes = self.connection_ids.by_cid  # read for every packet
        self._transport: asyncio.DatagramTransport | None = None
        self._sender = _Sender(self)
        self._dual_stack = False
        self._closed = False
        self.virtual_paths = virtual_paths
        self._connection_class = connection_class
        self.routes = RouteTable()
        self.on_unexpected_source = on_unexpected_source
        # beacon address → send function: relay datagrams (not QUIC) for a beacon reached over
        # TLS/TCP travel on that stream instead of UDP (see discretpeer.beacon_client)
        self.stream_links: dict[Addr, Callable[[bytes], None]] = {}
        # real address → another socket's send: a birthday hit (discretpeer/birthday_io.py) is a
        # NAT mapping that only that socket has; everything for that address goes through it
        self.via: dict[Addr, Callable[[bytes], None]] = {}
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.send_errors = 0
        # asyncio's selector loop: we read the socket ourselves, READ_BATCH datagrams per wakeup
        self.batched_reads = False
        self.tuning = tuning  # read when the socket is set up and when a connection attaches
        self._short_header_routing = tuning.short_header_routing  # read for every packet
        self._sock: socket.socket | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._raw: socket.socket | None = None  # the bound socket (GSO sends go straight to it)
        self.gso = False  # the kernel takes UDP_SEGMENT on this socket
        self.gro = False  # ... and UDP_GRO (only used by our own reader, asyncio's loop)
        self.gso_sends = 0  # sendmsg() calls that carried several datagrams
        self.coalesced_reads = 0  # GRO reads handed whole to a connection (_receive_coalesced)
        # GRO reads of relay frames: the owner takes them whole if it can (one session from its
        # beacon: discretpeer.relay_routes.RelayRoutes.on_frames), else each goes to on_datagram
        self.on_relay_frames: Callable[[bytes, int, Addr], bool] | None = None
        self.relay_runs = 0  # GRO reads of relay frames taken whole

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
        transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        endpoint._adopt(sock)
        endpoint._batch_reads(loop, sock, transport)
        return endpoint

    def _adopt(self, sock: socket.socket) -> None:
        """What the endpoint knows of its bound socket: its family's form of addresses and GSO."""
        self._dual_stack = sock.family == socket.AF_INET6 and not sock.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        self._raw = sock
        self.gso = self.tuning.gso and _has_sockopt(sock, UDP_SEGMENT)

    def serve_socket(self, sock: socket.socket, *, gro: bool = True) -> None:
        """Serve ``sock`` (bound, non-blocking) on the running loop, whichever it is, reading it
        ourselves: READ_BATCH datagrams per wakeup and, with ``gro`` where the kernel has UDP GRO,
        several datagrams of one source per read (the beacon's relay forwards such a run in one
        send: :meth:`send_run`; :meth:`read_coalesced` switches it later). The loop's own
        transport is not used; a :class:`SendingTransport` sends."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self.connection_made(SendingTransport(loop, sock, self))
        self._adopt(sock)
        self._sock, self._reader_loop = sock, loop
        self.read_coalesced(gro)
        self.batched_reads = True
        loop.add_reader(sock.fileno(), self._read_ready)

    def read_coalesced(self, on: bool) -> None:
        """Ask the kernel for GRO reads on the socket we read ourselves, or stop (a no-op where
        the socket or the kernel has none, or with ``Tuning(gso=False)``)."""
        on = on and self.tuning.gso
        if self._sock is None or on == self.gro:
            return
        try:
            self._sock.setsockopt(SOL_UDP, UDP_GRO, int(on))
            self.gro = on
        except OSError:
            self.gro = False

    def _batch_reads(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, transport: Any) -> None:
        """asyncio's own datagram transport reads one datagram per loop iteration: per packet a
        select() call, a loop iteration and a full transmit pass. On that loop, read up to
        READ_BATCH datagrams per wakeup from the socket ourselves (the transport still sends and
        closes it); connections then transmit once per batch, as they do on uvloop."""
        # the selector loop's own (private) registration: its public add_reader refuses a socket
        # that a transport owns
        add_reader = getattr(loop, "_add_reader", None)
        if (
            not self.tuning.batched_reads
            or READ_BATCH <= 1
            or self._coalesces(loop)
            or add_reader is None
            or not hasattr(loop, "_selector")
        ):
            return
        transport.pause_reading()  # removes the transport's reader for this socket
        self._sock, self._reader_loop = sock, loop
        self.batched_reads = True
        self.read_coalesced(True)
        add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None or self._closed:
            return
        gro = self.gro
        for _ in range(READ_BATCH):
            try:
                if gro:
                    data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _GRO_CMSG_SPACE)
                else:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                    ancillary = None
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier send: as the transport would
                self.error_received(exc)
                continue
            try:
                segment = _gro_segment(ancillary) if ancillary else 0
                if segment and len(data) > segment:  # several datagrams coalesced by the kernel
                    if self._receive_coalesced(data, segment, addr):
                        continue
                    if data[0] == RELAY_DATA and self._receive_relay_run(data, segment, addr):
                        continue
                    for offset in range(0, len(data), segment):
                        self.datagram_received(data[offset : offset + segment], addr)
                else:
                    self.datagram_received(data, addr)
            except Exception as exc:  # noqa: BLE001 - one bad datagram must not stop the reader
                self._read_failed(exc)

    def _read_failed(self, exc: Exception) -> None:
        """Handling a datagram our reader read raised: reported as the loop's transport would."""
        self._reader_loop.call_exception_handler(  # type: ignore[union-attr]  # set together with _sock
            {"message": "datagram_received failed", "exception": exc, "protocol": self}
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here

    def close(self) -> None:
        """Close every connection (with a CONNECTION_CLOSE) and the socket."""
        if self._closed:
            return
        self._closed = True
        for protocol in list(self.connection_ids.connections()):
            with contextlib.suppress(Exception):  # closing must go on for the others
                protocol.close()
        self.connection_ids.close()
        if self._sock is not None and self._reader_loop is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._reader_loop._remove_reader(self._sock.fileno())  # type: ignore[attr-defined]  # noqa: SLF001 - the selector loop's own registration, as in _batch_reads
            self._sock = None
        if self._transport is not None:
            self._transport.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default) if self._transport else default

    @property
    def local_address(self) -> Addr:
        sockname = self.get_extra_info("sockname")
        return (sockname[0], sockname[1])

    @property
    def port(self) -> int:
        return self.local_address[1]

    @property
    def connections(self) -> set[EndpointProtocol]:
        return self.connection_ids.connections()

    # --- sending ------------------------------------------------------------------------------

    def sendto(self, data: bytes, addr: SocketAddress) -> None:
        if self._transport is None or self._closed:
            return
        target = self._on_the_wire(data, addr)
        if target is None:
            return
        data, (host, port) = target
        try:
            self._transport.sendto(data, (host, port))
            self.datagrams_sent += 1
        except (OSError, ValueError):
            self.send_errors += 1

    def _on_the_wire(self, data: bytes, addr: SocketAddress) -> tuple[bytes, Addr] | None:
        """What goes out of this socket for ``data`` to ``addr``: a virtual address resolved
        through its route (relay frame or direct), the socket's address form; None when the
        datagram was handed elsewhere (the TLS/TCP stream of a beacon, the extra socket of a
        birthday hit) or cannot be sent. Both send paths (sendto, send_many) go through here."""
        if is_virtual(addr):
            route = self.routes.get((addr[0], addr[1]))
            wrapped = route.wrap(data) if route is not None else None
            if wrapped is None:
                self.send_errors += 1
                return None
            data, addr = wrapped
        if self.stream_links and data and data[0] == RELAY_DATA:
            link = self.stream_links.get((addr[0], addr[1]))
            if link is not None:  # a relay frame for a beacon reached over TLS/TCP
                link(data)
                return None
        host, port = addr[0], addr[1]
        if self.via:
            through = self.via.get((host, port))
            if through is not None:  # a birthday hit: only that socket has the NAT mapping
                through(data)
                self.datagrams_sent += 1
                return None
        return data, self._wire_address(host, port)

    def _run_to(self, addr: SocketAddress) -> tuple[bytes, Addr, Route | None] | None:
        """How every datagram to ``addr`` goes out of this socket, resolved once for a run of
        them: (what goes in front of it, the socket address, the relay route that counts it), or
        None when each needs :meth:`_on_the_wire` (a TCP link, a birthday socket, no route)."""
        route: Route | None = None
        header = b""
        if is_virtual(addr):
            route = self.routes.get((addr[0], addr[1]))
            framing = route.framing() if route is not None else None
            if framing is None:
                return None
            header, target = framing
            if not header:
                route = None
        else:
            target = (addr[0], addr[1])
        host, port = target[0], target[1]
        if (self.via and (host, port) in self.via) or (self.stream_links and (host, port) in self.stream_links):
            return None
        return header, self._wire_address(host, port), route

    def _wire_address(self, host: str, port: int) -> Addr:
        """``(host, port)`` as this socket takes it: IPv4 as mapped IPv6 on a dual-stack one."""
        if self._dual_stack and ":" not in host:
            host = "::ffff:" + host
        return host, port

    def send_many(self, datagrams: list[tuple[bytes, SocketAddress]], max_size: int | None = None) -> None:
        """Send a connection's datagrams of one transmit: runs of equal-sized datagrams to one
        address go in one sendmsg() with UDP_SEGMENT (the last of a run may be shorter); the
        rest one by one. A GSO send the kernel refuses where a plain one goes turns GSO off for
        this socket (:meth:`_gso_refused`). While the transport holds datagrams the kernel
        refused for a full buffer, every datagram queues behind them: nothing overtakes.

        A datagram longer than ``max_size`` (a path-MTU probe) always goes alone: the kernel
        sets DF on a GSO send only if the whole batch fits the route MTU, so a probe inside a
        batch could cross a smaller link as IP fragments and confirm a size the path does not
        carry (tests/natlab/test_paths.py caught it)."""
        if self._transport is None or self._closed:
            return
        wire: list[tuple[bytes, Addr]] = []
        alone: set[int] = set()
        # a transmit's datagrams mostly go to one address: it is resolved once per run (per
        # datagram it cost ~10 % of a bulk sender's CPU), except where each datagram is handed
        # elsewhere
        last: SocketAddress | None = None
        run: tuple[bytes, Addr, Route | None] | None = None
        for data, addr in datagrams:
            if addr is not last and addr != last:
                last, run = addr, self._run_to(addr)
            if max_size is not None and len(data) > max_size:
                alone.add(len(wire))
            if run is not None:
                header, to, relayed = run
                if relayed is not None:
                    relayed.bytes_relayed += len(data)
                    data = header + data
                wire.append((data, to))
                continue
            target = self._on_the_wire(data, addr)
            if target is None:
                alone.discard(len(wire))
                continue
            wire.append(target)
        index, count = 0, len(wire)
        transport = self._transport
        while index < count:
            data, addr = wire[index]
            size = len(data)
            end = gso_run_end(wire, index, alone)
            if (
                end - index > 1
                and size <= GSO_MAX_SEGMENT
                and self.gso
                and self._raw is not None
                # what the transport queued (the kernel said "full") goes first: a batch sent
                # past it would overtake it, and QUIC takes overtaken packets for lost ones
                and not self._queued_bytes()
            ):
                try:
                    self._raw.sendmsg(
                        [b"".join([d for d, _ in wire[index:end]])],
                        [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))],
                        0,
                        addr,
                    )
                    self.datagrams_sent += end - index
                    self.gso_sends += 1
                    index = end
                    continue
                except BlockingIOError:
                    pass  # the transport queues them one by one
                except OSError:
                    self._gso_refused(data, addr)
                    index += 1
            for data, addr in wire[index:end]:
                try:
                    transport.sendto(data, addr)
                    self.datagrams_sent += 1
                except (OSError, ValueError):
                    self.send_errors += 1
            index = end

    def _queued_bytes(self) -> int:
        """What the transport holds until the socket is writable again."""
        transport = self._transport
        if transport is None:
            return 0
        return int(transport.get_write_buffer_size())  # type: ignore[attr-defined]  # asyncio's, uvloop's and SendingTransport have it; typeshed's DatagramTransport does not declare it

    def send_run(self, data: bytes, segment: int, addr: Addr) -> None:
        """Send ``data`` as datagrams of ``segment`` bytes (the last may be shorter) to ``addr``:
        one sendmsg() with UDP_SEGMENT where the socket takes it, else one by one."""
        count = -(-len(data) // segment)
        if (
            count > 1
            and count <= GSO_MAX_SEGMENTS
            and segment <= GSO_MAX_SEGMENT
            and self.gso
            and self._raw is not None
            and not self._closed
            and not self.via
            and not self.stream_links
            and not is_virtual(addr)
            and not self._queued_bytes()  # queued datagrams go first (send_many)
        ):
            try:
                self._raw.sendmsg(
                    [data],
                    [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, "little"))],
                    0,
                    self._wire_address(addr[0], addr[1]),
                )
                self.datagrams_sent += count
                self.gso_sends += 1
                return
            except BlockingIOError:
                pass  # one by one: the transport queues what the kernel refuses
            except OSError:
                self._gso_refused(data[:segment], self._wire_address(addr[0], addr[1]))
                data = data[segment:]
        for offset in range(0, len(data), segment):
            self.sendto(data[offset : offset + segment], addr)

    def _gso_refused(self, first: bytes, addr: Addr) -> None:
        """A GSO send failed: the run's first datagram goes alone. If it leaves, the kernel
        refuses GSO itself on this socket (a device without checksum offload: EIO; checksums
        off: EINVAL), and plain sends follow from now on. If it fails too, the destination was
        the problem (no route to it, a firewall, port 0) and GSO stays on: one such address
        (a stale IPv6 candidate on an IPv4-only host) must not cost every other path its batches."""
        assert self._raw is not None and self._transport is not None
        try:
            self._raw.sendto(first, addr)
        except BlockingIOError:
            self._transport.sendto(first, addr)  # queued: nothing learnt about GSO
            return
        except OSError:
            self.send_errors += 1
            return
        self.datagrams_sent += 1
        self.gso = False

    def connect(
        self,
        addr: Addr,
        configuration: QuicConfiguration,
        create_protocol: Callable[[QuicConnection], EndpointProtocol] = EndpointProtocol,
        *,
        route: Route | None = None,
    ) -> EndpointProtocol:
        """Start an outgoing QUIC connection from this socket; await ``wait_connected()`` on it.
        With virtual paths, ``route`` (default: a new direct route to ``addr``) carries it."""
        if self._closed:
            raise ConnectionError("endpoint is closed")
        connection = connection_class_for(configuration, self._connection_class)(configuration=configuration)
        protocol = create_protocol(connection)
        self._attach(protocol)
        self.connection_ids.register(connection.host_cid, protocol)
        self.connection_ids.clients.add(protocol)
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

    def inject_many(self, datagrams: list[bytes], route: Route) -> None:
        """Deliver QUIC datagrams that arrived together over ``route``'s relay: short-header
        packets all for one connection (the usual run) go to it in one go, others one by one."""
        end = 1 + CONNECTION_ID_LENGTH
        cid = datagrams[0][1:end] if datagrams else b""
        protocol = self._routes.get(cid) if self._short_header_routing and cid else None
        if protocol is None or not all(
            data and data[0] & QUIC_FIXED_BIT and not data[0] & 0x80 and data[1:end] == cid for data in datagrams
        ):
            for data in datagrams:
                self.inject(data, route)
            return
        protocol.many_received(datagrams, self._arrived(protocol, route.virtual, route))

    # --- receiving ----------------------------------------------------------------------------

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable while punching) are normal; QUIC times out by itself.
        pass

    def datagram_received(self, data: bytes, addr: SocketAddress) -> None:
        self.datagrams_received += 1
        if not data:
            return
        source = normalize_address(addr)
        if not data[0] & QUIC_FIXED_BIT:
            if self.on_datagram is not None:
                self.on_datagram(data, source)
            return
        self._receive_quic(data, source, None)

    def _receive_coalesced(self, data: bytes, segment: int, addr: SocketAddress) -> bool:
        """Hand a GRO read whole to a connection that takes one (qh3: one call into its core for
        all of them): only short-header QUIC packets, all to the same connection ID of such a
        connection. False: nothing done, split it."""
        if not self._short_header_routing or data[0] & 0x80 or not data[0] & QUIC_FIXED_BIT:
            return False
        cid = data[1 : 1 + CONNECTION_ID_LENGTH]
        protocol = self._routes.get(cid)
        if protocol is None or not protocol.takes_coalesced:
            return False
        end = 1 + CONNECTION_ID_LENGTH
        for offset in range(segment, len(data), segment):
            if data[offset] & 0x80 or data[offset + 1 : offset + end] != cid:
                return False
        self.datagrams_received += -(-len(data) // segment)
        self.coalesced_reads += 1
        protocol.coalesced_received(data, segment, self._arrived(protocol, normalize_address(addr), None))
        return True

    def _receive_relay_run(self, data: bytes, segment: int, addr: SocketAddress) -> bool:
        """A GRO read of relay frames, to the owner whole (see ``on_relay_frames``)."""
        take = self.on_relay_frames
        if take is None or not take(data, segment, normalize_address(addr)):
            return False
        self.datagrams_received += -(-len(data) // segment)
        self.relay_runs += 1
        return True

    def _receive_quic(self, data: bytes, source: Addr, relay_route: Route | None) -> None:
        # a short header (nearly every packet) carries our connection ID right after its first
        # byte: routing it needs no header parse (~3 us per datagram, ~7 % of a bulk receiver)
        protocol = None
        if self._short_header_routing and not data[0] & 0x80:
            protocol = self._routes.get(data[1 : 1 + CONNECTION_ID_LENGTH])
        if protocol is None:
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
            except ValueError:
                return
            protocol = self._routes.get(header.destination_cid)
        if protocol is None:
            # a stateless reset carries no connection ID of ours: its last 16 bytes tell
            if self.connection_ids.clients and self._stateless_reset(data):
                return
            protocol = self._maybe_accept(data, source, header, relay_route)
            if protocol is None:
                return
        protocol.datagram_received(data, self._arrived(protocol, source, relay_route))

    def _arrived(self, protocol: EndpointProtocol, source: Addr, relay_route: Route | None) -> Addr:
        """Datagrams for ``protocol`` came from ``source`` (through ``relay_route``, if relayed):
        note the time, tell a direct source the route does not expect, and return the address the
        connection knows the path by (its route's virtual address, with virtual paths)."""
        if self.virtual_paths and protocol.route is not None:
            route = protocol.route
            # a relayed packet after we moved to a direct route is simply late: not news
            if relay_route is None and source != route.direct and self.on_unexpected_source is not None:
                self.on_unexpected_source(protocol, source)
            source = route.virtual
        protocol.last_received = asyncio.get_running_loop().time()
        return source

    def _maybe_accept(
        self, data: bytes, source: Addr, header: Any, relay_route: Route | None = None
    ) -> EndpointProtocol | None:
        config = self._server_configuration
        if config is None or self._create_server_protocol is None or self._closed:
            return None
        now = asyncio.get_running_loop().time()
        verdict = self._gate.decide(data, source, header, config.supported_versions, now)
        if not isinstance(verdict, Accept):
            if verdict is not None:  # a Version Negotiation or a Retry
                self.sendto(verdict, source)
            return None
        connection = connection_class_for(config, self._connection_class)(
            configuration=config,
            original_destination_connection_id=verdict.original_dcid,
            retry_source_connection_id=verdict.retry_scid,
        )
        protocol = self._create_server_protocol(connection)
        if self.virtual_paths:
            if relay_route is not None:
                self.routes.keep(relay_route)
            protocol.route = relay_route or self.routes.new(direct=source)
        self._attach(protocol)
        self.connection_ids.register(header.destination_cid, protocol)
        self.connection_ids.register(connection.host_cid, protocol)
        return protocol

    def _stateless_reset(self, data: bytes) -> bool:
        """End the outgoing connection ``data`` resets, if any (they are few: beacon connections
        and peer connections this side opened)."""
        if _is_long_header(data):
            return False
        for protocol in list(self.connection_ids.clients):
            if is_reset(data, protocol.reset_tokens()):
                protocol.stateless_reset()
                return True
        return False

    # --- connections ------------------------------------------------------------------------

    def _coalesces(self, loop: asyncio.AbstractEventLoop) -> bool:
        """The loop hands us several datagrams per wakeup: connections transmit once per batch."""
        return self.tuning.coalesce_transmits and _batches_reads(loop)

    def _attach(self, protocol: EndpointProtocol) -> None:
        protocol.endpoint = self
        if self._coalesces(protocol.loop) or self.batched_reads:
            protocol.defer_transmits = True  # the class default is False
        protocol.connection_made(self._sender)  # type: ignore[arg-type]  # the sender stands in for the shared socket's transport

    def forget(self, protocol: EndpointProtocol) -> None:
        """A connection ended: its IDs leave the table, and its route with the last user of it."""
        if self.connection_ids.forget(protocol):
            self.routes.drop(protocol.route)  # type: ignore[arg-type]  # forget() is True only with a route


def gso_run_end(wire: list[tuple[bytes, Addr]], index: int, alone: set[int]) -> int:
    """The end of the run of datagrams from ``index`` that one GSO send may carry: same address,
    same size (the last may be shorter), within the kernel's limits; ``alone`` ones never join."""
    data, addr = wire[index]
    end = index + 1
    if index in alone:
        return end
    size = total = len(data)
    last = min(len(wire), index + GSO_MAX_SEGMENTS)
    while end < last and not (alone and end in alone):
        following, to = wire[end]
        length = len(following)
        if (to is not addr and to != addr) or length > size or total + length > GSO_MAX_BYTES:
            break
        total += length
        end += 1
        if length < size:
            break
    return end


def _is_long_header(data: bytes) -> bool:
    return bool(data) and bool(data[0] & 0x80)


def _has_sockopt(sock: socket.socket, option: int) -> bool:
    try:
        sock.getsockopt(SOL_UDP, option)
    except OSError:
        return False
    return True


def _gro_segment(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a GRO read (0: a single datagram)."""
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 2:
            return int.from_bytes(value[:4] if len(value) >= 4 else value[:2], "little")
    return 0


# Bytes asked for a peer socket's buffers. The receive side holds what arrives while the loop is
# busy elsewhere. In the NAT lab's bulk rows (windows for the path, 100-200 MB/s) 4 MiB overflowed
# in four of eight, each overflow dropping a whole GRO batch (~30 packets; 7,000-11,000 packets a
# transfer); 16 MiB in none, at the same round trip (benchmarks/README.md, "The receiver's socket
# buffer"). It costs memory only while full. The send side only smooths the kernel's hand-over.
RECEIVE_BUFFER = 16 * 1024 * 1024
SEND_BUFFER = 4 * 1024 * 1024
BUFFER_FIX = f"sysctl -w net.core.rmem_max={RECEIVE_BUFFER} net.core.wmem_max={SEND_BUFFER}"
_FORCE_OPTIONS = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}  # Linux: SO_RCVBUFFORCE, SO_SNDBUFFORCE
_LINUX = sys.platform.startswith("linux")  # elsewhere 32 and 33 are other options


def enlarge_buffers(sock: socket.socket, receive: int = RECEIVE_BUFFER, send: int = SEND_BUFFER) -> tuple[int, int]:
    """Ask for ``receive``- and ``send``-byte buffers on a UDP socket: room for bursts of QUIC
    packets while the loop is busy. Linux caps the ask at net.core.rmem_max / wmem_max (208 KiB
    on a stock system) unless the process may go beyond (CAP_NET_ADMIN: the FORCE options, tried
    first); a refusal is ignored. Returns the (receive, send) bytes granted, 0 where unknown."""
    granted = []
    for option, size in ((socket.SO_RCVBUF, receive), (socket.SO_SNDBUF, send)):
        forced = False
        if _LINUX:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _FORCE_OPTIONS[option], size)
                forced = True
            except OSError:
                pass  # not privileged: what the limit allows
        if not forced:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, size)
        try:
            value = sock.getsockopt(socket.SOL_SOCKET, option)
        except OSError:
            value = 0
        # Linux reports twice what it granted (the other half is its bookkeeping)
        granted.append(value // 2 if _LINUX else value)
    return granted[0], granted[1]


def buffers_short(receive: int, send: int) -> bool:
    """Whether a peer socket got less than it asked (``enlarge_buffers``' answer; 0: unknown)."""
    return 0 < receive < RECEIVE_BUFFER or 0 < send < SEND_BUFFER


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
    receive, send = enlarge_buffers(sock)
    if buffers_short(receive, send):
        log.warning(
            "UDP socket buffers below what was asked: at high rates bursts are dropped",
            receive=receive,
            send=send,
            asked=[RECEIVE_BUFFER, SEND_BUFFER],
            fix=BUFFER_FIX,
        )
    sock.setblocking(False)
    return sock
