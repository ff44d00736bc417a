"""Verified peer-to-peer QUIC connections and the identity handshake that makes them verified.

The dialer opens stream 0 and sends its proof; the listener checks it (signature bound to this
connection, token of one of its meetings, peer id acceptable), answers with its own proof or a
refusal, and the dialer checks that. Only then does the app see the connection; app streams start
at stream 4. A refusal or a bad proof closes the connection with a reason both sides can report.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from discretpeer import heap
from discretpeer._aioquic import StreamAdapter, reader_buffered, resume_at_next_read, set_ack_delay
from discretpeer.addresses import Addr
from discretpeer.auth import (
    AuthError,
    PeerPolicy,
    Proof,
    Refusal,
    RefusalReason,
    Role,
    build_proof,
    build_refusal,
    connection_exporter,
    parse_auth,
    read_auth_frame,
    verify_proof,
)
from discretpeer.endpoint import EndpointProtocol
from discretpeer.flow import AppPacedQuicConnection, stream_water_marks
from discretpeer.identity import Identity
from discretpeer.logs import get_logger
from discretpeer.path_mtu import DatagramSizeSearch, datagram_limit, probe_sizes
from discretpeer.proto.relay_frame import RELAY_HEADER_SIZE
from discretpeer.quic_stack import (
    NativeQuicConnection,
    active_path_address,
    all_unacked_bytes,
    bytes_in_flight,
    max_datagram_size,
    smoothed_rtt,
)
from discretpeer.tasks import wait_for
from discretpeer.tuning import tuning_of

PathKind = Literal["direct", "lan", "relay"]
log = get_logger("discretpeer.connection")
AUTH_TIMEOUT = 5.0
PING_WHEN_QUIET = 2.0  # a connection silent this long gets a PING (keeps NATs open, proves the path)
LIVENESS_TIMEOUT = 6.0  # nothing at all from the peer this long: the path is gone, say so
MAX_PENDING_STREAMS = 64
# a stream's reader asks for more once the app has read it down to this; above twice this asyncio
# pauses it (and on qh3 the connection takes no more events): what one unread stream holds in Python
READER_LIMIT = 1024 * 1024
AUTH_STREAM_ID = 0


class _FlowControlledAdapter(StreamAdapter):
    """aioquic's stream transport buffers every write forever; this one pauses the writer
    (so ``await writer.drain()`` waits) while too much is sent but not yet acknowledged."""

    protocol: PeerProtocol

    def __init__(self, protocol: PeerProtocol, stream_id: int) -> None:
        super().__init__(protocol, stream_id)
        self.flow: asyncio.streams.StreamReaderProtocol | None = None
        self.paused = False
        self.sliced = 0  # bytes written in this loop iteration (Tuning.write_slice)
        quic = protocol.quic
        self._native = quic if isinstance(quic, NativeQuicConnection) else None  # qh3: it counts itself

    def unacknowledged(self) -> int:
        if self._native is not None:
            return self._native.unacked_bytes(self.stream_id)
        return super().unacknowledged()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            super().write(data)
        except (RuntimeError, AssertionError) as exc:  # aioquic: stream reset or connection gone
            raise ConnectionResetError(f"stream {self.stream_id}: {exc}") from exc
        if self.paused or self.flow is None:
            return
        if self.unacknowledged() > self.protocol.water_marks()[0]:
            self._pause_until_acknowledged()
            return
        slice_size = self.protocol.write_slice
        if slice_size:
            if not self.sliced:  # the first write of this loop iteration
                self.protocol.loop.call_soon(self._end_slice)
            self.sliced += len(data)
            if self.sliced >= slice_size:
                # drain() waits for one loop iteration: the connection's datagrams and the other
                # tasks get their turn (see Tuning.write_slice)
                self.paused = True
                self.flow.pause_writing()

    def _pause_until_acknowledged(self) -> None:
        assert self.flow is not None
        self.paused = True
        self.flow.pause_writing()
        self.protocol.paused_streams.add(self)

    def _end_slice(self) -> None:
        """The loop went round once since this iteration's first write: a writer paused for its
        slice resumes (its next write checks the water marks again); one paused for them waits on."""
        self.sliced = 0
        if self.paused and self not in self.protocol.paused_streams and self.flow is not None:
            self.paused = False
            self.flow.resume_writing()

    def write_eof(self) -> None:
        try:
            super().write_eof()
        except (RuntimeError, AssertionError, ValueError):  # already reset or finished (freed)
            self.mark_closing()

    def abort(self) -> None:
        """Reset the stream both ways (the peer's reader gets ConnectionResetError, not a clean
        EOF): what a TCP reset on one side of a tunnel should become on the other."""
        self.mark_closing()
        with contextlib.suppress(Exception):
            self.protocol.quic.reset_stream(self.stream_id, 0x100)
        with contextlib.suppress(Exception):
            self.protocol.quic.stop_stream(self.stream_id, 0x100)
        self.protocol.transmit_soon()

    # the stream's reader calls these (asyncio's StreamReader flow control): when the app has
    # read enough, send the credit the AppPacedQuicConnection now grants
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        if self._native is not None and self._native.release_events():
            self.protocol.process_events()  # qh3: the data held back while the app read nothing
        self.protocol.transmit_soon()

    def maybe_resume(self) -> bool:
        if self.paused and (self.unacknowledged() < self.protocol.water_marks()[1] or self.protocol.closing):
            self.paused = False
            if self.flow is not None:
                self.flow.resume_writing()
            return True
        return False


class PeerProtocol(EndpointProtocol):
    """The QUIC side of a peer connection; hands streams and the end of life to its owner."""

    def __init__(self, quic: QuicConnection, **kwargs: object) -> None:
        super().__init__(quic, stream_handler=self._on_stream)
        self.auth_stream: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        self.incoming_streams: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue(
            MAX_PENDING_STREAMS
        )
        self.close_reason: str | None = None
        self.terminated = asyncio.Event()
        self.handshake_done = asyncio.Event()
        self.paused_streams: set[_FlowControlledAdapter] = set()
        tuning = tuning_of(quic)
        self.stream_high_water = tuning.stream_high_water  # a stream's writer pauses above, resumes below low
        self.stream_low_water = tuning.stream_low_water  # (at least: see water_marks)
        self.stream_high_water_max = tuning.stream_high_water_max
        self.write_slice = tuning.write_slice  # a writer yields to the loop after this much in one iteration
        if tuning.ack_delay is not None and not isinstance(quic, NativeQuicConnection):
            set_ack_delay(quic, tuning.ack_delay)  # qh3: no setting (its core acknowledges by itself)
        self.unread_ceiling = tuning.max_data // 2  # qh3: what all streams' readers may hold together
        if isinstance(quic, AppPacedQuicConnection):
            quic.unread = self._unread
        elif isinstance(quic, NativeQuicConnection):
            # qh3 cannot change a live connection's datagram size: fit the route it starts on
            quic.limit_datagram_size(self.datagram_limit)
            quic.hold_events_while(self._readers_are_full)

    def water_marks(self) -> tuple[int, int]:
        """(high, low) unacknowledged bytes at which a stream's writer pauses / resumes now:
        the tuning's, raised with the bytes in flight (:func:`flow.stream_water_marks`)."""
        return stream_water_marks(
            bytes_in_flight(self.quic), self.stream_high_water, self.stream_low_water, self.stream_high_water_max
        )

    def _unread(self, stream_id: int | None) -> int:
        """Bytes received and not yet read by the app (on one stream, or on all)."""
        if stream_id is None:
            return sum(reader_buffered(reader) for reader in self.stream_readers.values())
        reader = self.stream_readers.get(stream_id)
        return reader_buffered(reader) if reader is not None else 0

    def _readers_are_full(self) -> bool:
        """qh3 (asked after every datagram): take no more data while a stream's reader holds more
        than it lets in (above twice its limit, READER_LIMIT, asyncio pauses it and calls
        resume_reading once read down to the limit), or all readers together more than
        ``unread_ceiling``; then every reader is told to call resume_reading at its next read, so
        the first read that may change the answer asks again."""
        readers = self.stream_readers.values()
        total = 0
        for reader in readers:
            buffered = reader_buffered(reader)
            if buffered > 2 * READER_LIMIT:
                return True
            total += buffered
        if total <= self.unread_ceiling:
            return False
        for reader in readers:
            resume_at_next_read(reader)
        return True

    def make_stream(self, stream_id: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        adapter = _FlowControlledAdapter(self, stream_id)
        # limit: the reader asks for more credit once the app has read it down to this
        reader = asyncio.StreamReader(limit=READER_LIMIT)
        reader.set_transport(adapter)
        flow = asyncio.streams.StreamReaderProtocol(reader)
        adapter.flow = flow
        writer = asyncio.StreamWriter(adapter, flow, reader, self.loop)
        return reader, writer

    def transmit(self) -> None:
        super().transmit()
        if self.paused_streams:
            for adapter in [a for a in self.paused_streams if a.maybe_resume()]:
                self.paused_streams.discard(adapter)

    def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream_id = writer.get_extra_info("stream_id")
        if stream_id == AUTH_STREAM_ID:
            if not self.auth_stream.done():
                self.auth_stream.set_result((reader, writer))
            return
        if self.incoming_streams.full():
            # past the app's backlog: refuse. Streams that arrive before the identity exchange
            # finished (the dialer's first stream can share a packet with its last auth byte) are
            # queued: the app only sees them once verified, and QUIC flow control bounds them.
            with contextlib.suppress(Exception):
                self.quic.reset_stream(stream_id, 0x1)
                self.quic.stop_stream(stream_id, 0x1)
            return
        self.incoming_streams.put_nowait((reader, writer))

    async def wait_handshake(self) -> None:
        """Wait for the TLS handshake. (aioquic's ``wait_connected`` misses a handshake that
        completed before it was called, which happens on the accepting side.)"""
        if self.handshake_done.is_set():
            return
        done = asyncio.ensure_future(self.handshake_done.wait())
        ended = asyncio.ensure_future(self.terminated.wait())
        try:
            await asyncio.wait({done, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            ended.cancel()
        if not self.handshake_done.is_set():
            raise ConnectionError(self.close_reason or "connection closed during the handshake")

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamReset):
            # aioquic leaves the reader waiting forever: tell it, and forget the stream
            reader = self.stream_readers.pop(event.stream_id, None)
            if reader is not None:
                reader.set_exception(ConnectionResetError(f"stream reset by the peer (code {event.error_code})"))
            return
        if isinstance(event, events.StreamDataReceived) and event.end_stream:
            super().quic_event_received(event)
            self.stream_readers.pop(event.stream_id, None)  # finished: no more data can come
            return
        if isinstance(event, events.HandshakeCompleted):
            self.handshake_done.set()
        elif isinstance(event, events.ConnectionTerminated):
            if self.close_reason is None:
                self.close_reason = event.reason_phrase or f"closed (error {event.error_code})"
            self.terminated.set()
            for adapter in self.paused_streams:
                if adapter.flow is not None:
                    adapter.flow.connection_lost(ConnectionError(self.close_reason))
            self.paused_streams.clear()
            if not self.auth_stream.done():
                self.auth_stream.set_exception(ConnectionError(self.close_reason))
                self.auth_stream.exception()  # retrieved: nobody may be waiting any more
        super().quic_event_received(event)

    def route_target(self) -> tuple[Addr | None, int]:
        """Where our datagrams go now, and what each carries besides the QUIC packet."""
        route = self.route
        if route is not None and route.kind == "relay" and route.relay is not None:
            return route.relay.beacon, RELAY_HEADER_SIZE
        return (route.direct if route is not None else self.remote_address), 0

    def datagram_limit(self) -> int | None:
        """The largest QUIC datagram the current route takes without fragmenting at our host."""
        target, overhead = self.route_target()
        return datagram_limit(target, overhead=overhead)

    @property
    def remote_address(self) -> Addr:
        """Where packets go now (the beacon's address while relayed)."""
        if self.route is not None and self.route.real is not None:
            return self.route.real
        return active_path_address(self.quic)

    def close_with(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        with contextlib.suppress(Exception):
            self.close(error_code=0, reason_phrase=reason[:200])


@dataclass(frozen=True)
class VerifiedPeer:
    peer_id: str
    token: bytes


async def authenticate_as_dialer(
    protocol: PeerProtocol, identity: Identity, token: bytes, policy: PeerPolicy, timeout: float = AUTH_TIMEOUT
) -> VerifiedPeer:
    exporter = connection_exporter(protocol.quic)
    reader, writer = await protocol.create_stream()
    writer.write(build_proof(identity, Role.DIALER, exporter, token))
    try:
        answer = parse_auth(await read_auth_frame(reader, timeout))
    except asyncio.IncompleteReadError as exc:
        raise AuthError(f"peer closed before proving its identity ({protocol.close_reason or 'no reason'})") from exc
    if isinstance(answer, Refusal):
        raise AuthError(f"peer refused us: {answer.text}")
    if answer.token != token:
        raise AuthError("peer answered for another meeting")
    peer_id = verify_proof(answer, Role.LISTENER, exporter)
    if not policy.accepts(peer_id):
        writer.write(build_refusal(RefusalReason.UNEXPECTED_PEER, "you are not the peer I expect"))
        protocol.transmit()  # before the caller closes: a closing connection sends nothing else
        raise AuthError(f"peer {peer_id} is not the expected peer ({policy.description})")
    writer.write_eof()
    return VerifiedPeer(peer_id=peer_id, token=token)


async def authenticate_as_listener(
    protocol: PeerProtocol,
    identity: Identity,
    lookup: Callable[[bytes], PeerPolicy | None],
    timeout: float = AUTH_TIMEOUT,
) -> VerifiedPeer:
    reader, writer = await wait_for(asyncio.shield(protocol.auth_stream), timeout)
    exporter = connection_exporter(protocol.quic)
    message = parse_auth(await read_auth_frame(reader, timeout))
    if not isinstance(message, Proof):
        raise AuthError("dialer sent no identity proof")

    def refuse(reason: RefusalReason, text: str) -> AuthError:
        writer.write(build_refusal(reason, text))
        protocol.transmit()  # before the caller closes: a closing connection sends nothing else
        return AuthError(text)

    policy = lookup(message.token)
    if policy is None:
        raise refuse(RefusalReason.UNKNOWN_MEETING, "no such meeting here")
    try:
        peer_id = verify_proof(message, Role.DIALER, exporter)
    except AuthError as exc:
        raise refuse(RefusalReason.BAD_PROOF, str(exc)) from exc
    if not policy.accepts(peer_id):
        raise refuse(RefusalReason.UNEXPECTED_PEER, f"peer {peer_id} is not expected here")
    writer.write(build_proof(identity, Role.LISTENER, exporter, message.token))
    # the dialer may still refuse us: it answers with EOF (accepted) or a refusal frame
    try:
        tail = await wait_for(reader.read(2 + 512), timeout)
    except TimeoutError as exc:
        raise AuthError("dialer did not confirm the identity exchange") from exc
    if tail:
        refusal: object = None
        if len(tail) >= 2:
            (length,) = struct.unpack_from("!H", tail)
            with contextlib.suppress(AuthError):
                refusal = parse_auth(tail[2 : 2 + length])
        if isinstance(refusal, Refusal):
            raise AuthError(f"peer refused us: {refusal.text}")
        raise AuthError("dialer sent unexpected data on the identity stream")
    # aioquic ends every stream when the connection ends: only a FIN on a live connection is
    # the dialer's acceptance
    await asyncio.sleep(0)
    if protocol.terminated.is_set():
        raise AuthError(f"peer closed the connection: {protocol.close_reason}")
    return VerifiedPeer(peer_id=peer_id, token=message.token)


class PeerConnection:
    """A verified connection to another peer. Use as ``async with`` or call :meth:`close`.

    ``peer_id`` is proven (the other side signed this very connection with that key);
    ``path`` is ``"direct"``, ``"lan"`` or ``"relay"``.
    """

    def __init__(
        self,
        protocol: PeerProtocol,
        verified: VerifiedPeer,
        path: PathKind,
        *,
        dialer: bool,
        introduced_at: float | None = None,
        on_close: Callable[[PeerConnection], None] | None = None,
        on_quiet: Callable[[PeerConnection], None] | None = None,
    ) -> None:
        self._protocol = protocol
        self.peer_id = verified.peer_id
        self._direct_kind: PathKind = "lan" if path == "lan" else "direct"
        self.path_changes: asyncio.Queue[PathKind] = asyncio.Queue(16)
        self.dialer = dialer
        self.token = verified.token
        self.verified_at = time.monotonic()
        self.time_to_connect = None if introduced_at is None else self.verified_at - introduced_at
        self._on_close = on_close
        self._on_quiet = on_quiet  # the peer has not answered for PING_WHEN_QUIET (every second)
        heap.keep_freed_memory()  # once per process: see discretpeer.heap (the ".pyc effect")
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
        self._watch = asyncio.get_running_loop().create_task(self._watch_close())
        if isinstance(protocol.quic, DatagramSizeSearch):
            protocol.quic.size_limit = protocol.datagram_limit
        self._search_datagram_size()

    def __repr__(self) -> str:
        return f"<PeerConnection {self.peer_id[:12]}… {self.path} {self.remote_address}>"

    @property
    def remote_address(self) -> Addr:
        return self._protocol.remote_address

    @property
    def path(self) -> PathKind:
        """``"direct"``, ``"lan"`` or ``"relay"``: how packets travel right now."""
        route = self._protocol.route
        if route is not None and route.kind == "relay":
            return "relay"
        return self._direct_kind

    def _set_path(self, direct_kind: PathKind | None = None) -> None:
        """Called by the peer after it switched the route (``direct_kind``: what a direct route
        now is, "lan" or "direct"; None: unchanged); queues the new path for watchers."""
        if direct_kind is not None:
            self._direct_kind = "lan" if direct_kind == "lan" else "direct"
        self._search_datagram_size()
        with contextlib.suppress(asyncio.QueueFull):
            self.path_changes.put_nowait(self.path)

    def _search_datagram_size(self) -> None:
        """On a new path: back to the base datagram size, then probe for larger datagrams (see
        :mod:`discretpeer.path_mtu`); through a relay, inside relay frames."""
        quic = self._protocol.quic
        if not isinstance(quic, DatagramSizeSearch) or self.closed:
            return
        quic.reset_datagram_size()
        if not tuning_of(quic).path_mtu_probing:
            return
        target, overhead = self._protocol.route_target()
        sizes = probe_sizes(target, quic.base_datagram_size, overhead=overhead)
        if sizes:
            quic.search_datagram_size(sizes)
            self._protocol.transmit_soon()

    @property
    def datagram_size(self) -> int:
        """Bytes per datagram this side sends now (larger once a path-MTU probe confirmed it)."""
        return max_datagram_size(self._protocol.quic)

    @property
    def receive_window(self) -> int:
        """Bytes one stream may have in flight towards this side (the stream receive window:
        ``Tuning.max_stream_data``, or what ``Tuning.for_path`` sized; fixed for the connection).
        On qh3 about half of it is in flight per round trip, so one stream receives up to about
        ``receive_window / 2 / rtt`` bytes per second."""
        return tuning_of(self._protocol.quic).max_stream_data

    @property
    def closed(self) -> bool:
        """True from the moment either side closes (QUIC then drains for a while: we don't wait)."""
        protocol = self._protocol
        return protocol.terminated.is_set() or protocol.close_reason is not None or protocol.closing

    @property
    def close_reason(self) -> str | None:
        return self._protocol.close_reason

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time measured by QUIC, in seconds."""
        rtt = smoothed_rtt(self._protocol.quic)
        return rtt or None

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a bidirectional stream to the peer."""
        if self.closed:
            raise ConnectionError(f"connection to {self.peer_id} is closed ({self.close_reason})")
        return await self._protocol.create_stream()

    async def accept_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Wait for the peer to open a stream; raises ConnectionError once the connection closes."""
        get = asyncio.ensure_future(self._protocol.incoming_streams.get())
        closed = asyncio.ensure_future(self._protocol.terminated.wait())
        try:
            await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if get.done():
            return get.result()
        get.cancel()
        raise ConnectionError(f"connection to {self.peer_id} closed ({self.close_reason})")

    async def ping(self, timeout: float = 5.0) -> float:
        """Round trip of a QUIC PING, in seconds."""
        started = time.monotonic()
        await wait_for(self._protocol.ping(), timeout)
        return time.monotonic() - started

    def close(self, reason: str = "closed by application") -> None:
        """Close at once: data not yet acknowledged by the peer is lost (see :meth:`aclose`)."""
        self._protocol.close_with(reason)
        self._protocol.transmit()

    def unacknowledged(self) -> int:
        """Bytes written on our streams that the peer has not acknowledged yet."""
        return all_unacked_bytes(self._protocol.quic)

    async def aclose(self, reason: str = "closed by application", timeout: float = 5.0) -> None:
        """Close after the peer acknowledged what we wrote (waiting at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        if not self.closed:
            # what was just written (a stream's end, a FIN alone) waits for the next transmit:
            # send it now, so that it is in flight (counted below) and leaves before the close
            self._protocol.transmit()
        while not self.closed and self.unacknowledged() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.close(reason)
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self.wait_closed(), max(0.1, deadline - time.monotonic()))

    async def wait_closed(self) -> None:
        await self._protocol.terminated.wait()

    async def __aenter__(self) -> PeerConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _keep_alive(self) -> None:
        """PING a quiet connection (NAT mappings die after 30 s on many routers, and the answer
        proves the path); close it when the peer has been silent for LIVENESS_TIMEOUT, so the app
        learns within seconds, not after QUIC's idle timeout, that it must reconnect."""
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        protocol.last_received = max(protocol.last_received, loop.time())
        while not self.closed:
            await asyncio.sleep(PING_WHEN_QUIET / 2)
            quiet = loop.time() - protocol.last_received
            if quiet > LIVENESS_TIMEOUT:
                self.close(f"path lost: nothing from the peer for {quiet:.0f} s")
                return
            if quiet > PING_WHEN_QUIET:
                with contextlib.suppress(Exception):
                    protocol.quic.send_ping(0)
                    protocol.transmit()
                if self._on_quiet is not None:
                    self._on_quiet(self)
            self._check_datagram_size()

    def _check_datagram_size(self) -> None:
        """The kernel learnt a smaller path MTU (ICMP) than our datagrams: they would now leave
        as fragments. Back to the base size and search again."""
        quic = self._protocol.quic
        if not isinstance(quic, DatagramSizeSearch) or quic.datagram_size <= quic.base_datagram_size:
            return
        limit = self._protocol.datagram_limit()
        if limit is not None and limit < quic.datagram_size:
            log.info("path MTU dropped", peer=self.peer_id, datagram_size=quic.datagram_size, limit=limit)
            self._search_datagram_size()

    async def _watch_close(self) -> None:
        await self._protocol.terminated.wait()
        self._keepalive.cancel()
        if self._on_close is not None:
            self._on_close(self)
