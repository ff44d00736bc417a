"""The beacon over TLS 1.3 on TCP, for peers whose network drops UDP.

Same certificate as QUIC (so the same ``cert_hash`` pins it), ALPN
:data:`~discretpeer.proto.stream_frames.BEACON_TCP_ALPN`, and the same wire messages, length-prefixed
on the stream together with relay datagrams (:mod:`discretpeer.proto.stream_frames`). Once the TLS
handshake is done a connection is a client like any other: :class:`TcpClient` offers the
server the same small interface as a QUIC :class:`~beacon.server.BeaconProtocol` (send a frame,
unsent bytes, validated address, close), and relay datagrams from and to it go through the
same :class:`~beacon.relay.RelayTable` (``sendto`` makes it the session side's ``via``).

TLS runs on memory BIOs inside a plain :class:`asyncio.Protocol`, so before any TLS state the
first bytes are looked at (plain HTTP and garbage are closed and counted at once), the
handshake has a deadline (slowloris), and every buffer is bounded: one TLS record in, one stream
item in the decoder, ``max_unsent_bytes`` of control frames out (then SLOW_READER) and
``tcp_max_unsent_relay_bytes`` of relayed datagrams (beyond: dropped, as on a full UDP path).
Admission is the UDP side's: the global connection cap and the per-IP handshake bucket before
the handshake, the per-IP connection count after it.

**The browser-shell page on the same port** (``web_enabled`` with ``web_certificate``): with a started
web service (beacon/web.py), the first TLS record (the ClientHello) is read before any TLS state is
made, and the TLS context is chosen from it (beacon/client_hello.py): our ALPN offered → the beacon's
certificate, whatever the server name; a server name of the domain certificate with ``http/1.1``/``h2``
or no ALPN → the domain certificate and ALPN ``http/1.1``, then the connection is handed to the web
service (:class:`_WebTransport` carries its plaintext). Everything before that is shared: the
admission above, the handshake deadline and size bound; a web connection then counts against the same
global and per-IP connection caps as a peer until it closes (websockets' own timeouts bound it:
10 s for an HTTP request, pings on a WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
import typing
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from beacon.client_hello import (
    MAX_RECORD,
    RECORD_HEADER,
    ClientHello,
    first_record_size,
    name_matches,
    parse_client_hello,
)
from beacon.limits import ip_key
from discretpeer.addresses import Addr
from discretpeer.endpoint import normalize_address
from discretpeer.loop_batch import LoopBatch
from discretpeer.proto.stream_frames import BEACON_TCP_ALPN, StreamDecoder, encode_datagram
from discretpeer.proto.wire import ErrorCode, WireError
from discretpeer.tasks import wait_for

if TYPE_CHECKING:
    from beacon.server import BeaconServer, _Client
    from certs import CertificateBundle

_TLS_HANDSHAKE_RECORD = 0x16
_HTTP_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"CONN", b"OPTI", b"DELE", b"PATC", b"PRI ")
MAX_HANDSHAKE_BYTES = 16384  # a ClientHello is a few hundred bytes; nothing legitimate sends more unanswered
_READ_SIZE = 65536
SOCKET_SEND_BUFFER = 65536  # the kernel doubles it
SWEEP_INTERVAL = 1.0  # seconds between idle checks (and the coarse clock data_received stamps)
WEB_ALPNS = ("http/1.1", "h2")  # what browsers offer (the web context then selects http/1.1)


class WebEndpoint(typing.Protocol):
    """What the listener needs of the web service (beacon.web.WebService, once started)."""

    tls_context: ssl.SSLContext | None  # the owner's domain certificate; None = not on this listener
    hostnames: tuple[str, ...]  # its DNS names: a browser's SNI must be one of them

    @property
    def serving(self) -> bool: ...  # False once stopped (the beacon may still be stopping)

    def accept(self, transport: asyncio.Transport) -> asyncio.Protocol: ...


def server_context(bundle: CertificateBundle) -> ssl.SSLContext:
    """TLS 1.3 only, the beacon's Ed25519 certificate, our ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([BEACON_TCP_ALPN])
    context.options |= ssl.OP_NO_TICKET  # no session tickets: nothing to resume, nothing to store
    cert = bundle.certificate.public_bytes(serialization.Encoding.PEM)
    key = bundle.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # ssl loads certificates from files only: a private temporary file, removed at once
    fd, path = tempfile.mkstemp(prefix="beacon-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert + key)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context


class TcpClient(asyncio.Protocol):
    """One TLS/TCP connection to the beacon (before and after its TLS handshake)."""

    dead = False

    def __init__(self, service: TcpService) -> None:
        self.service = service
        self.server = service.server
        self.peer: _Client | None = None
        self.address: Addr = ("0.0.0.0", 0)
        self.transport: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = service.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # with the web on this listener: the first TLS record, kept until it chooses the context
        self._hello: bytearray | None = bytearray() if service.web is not None else None
        self._web_tls = False  # handshaking (or done) with the domain certificate
        self.web: asyncio.Protocol | None = None  # the web service's connection, once handed over
        self._web_counted = False
        self._paused = False
        self._decoder = StreamDecoder(max_frame=self.server.config.max_frame_size)
        self._established = False
        self._first = True
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.last_received = 0.0  # loop time of the last bytes from the client (idle sweep)
        self._batch = LoopBatch(self._write_batch)  # relay datagrams to write at the end of this loop iteration

    # --- the interface BeaconServer uses (shared with BeaconProtocol) --------------------------

    @property
    def endpoint(self) -> TcpClient:
        """Relay datagrams to this client go through :meth:`sendto` (the session side's ``via``)."""
        return self

    def send_frame(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("TLS connection closed")
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise RuntimeError(f"TLS write failed: {exc}") from exc
        self._flush()

    def unsent_bytes(self) -> int:
        transport = self.transport
        return (transport.get_write_buffer_size() if transport is not None else 0) + self._outgoing.pending

    def can_send_frames(self) -> bool:
        return self._established and not self._closed

    def validated_address(self) -> Addr | None:
        # a TCP handshake proves the client receives at this address
        return self.address

    def validated_paths(self) -> list[Addr]:
        return [self.address]

    def transmit(self) -> None:
        pass  # written at once

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        """Close after what is queued (TLS close_notify first)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            if self._established:
                self._tls.unwrap()
        self._flush(force=True)
        if self.transport is not None:
            self.transport.close()

    def sendto(self, data: bytes, addr: Any) -> None:
        """A relay datagram for this client (``addr`` is its own address: the relay's target)."""
        if self._closed or not self._established:
            return
        if self.unsent_bytes() + self._batch.size > self.server.config.tcp_max_unsent_relay_bytes:
            self.service.relay_backlog_drops += 1
            return
        # datagrams of one loop iteration go out together (discretpeer.loop_batch)
        self._batch.add(encode_datagram(data))

    def _write_batch(self, data: bytes) -> None:
        if not self._closed:
            try:
                self._tls.write(data)
            except ssl.SSLError:
                return
            self._flush()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here
        peername = transport.get_extra_info("peername")
        self.address = normalize_address(peername) if peername else ("0.0.0.0", 0)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # a bounded kernel queue too: what a client does not read piles up in our
                # buffer, where max_unsent_bytes sees it (and memory per client stays small)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        refusal = self.service.admit(self.address)
        if refusal is not None:
            self.server.metrics.handshakes_refused.labels(refusal).inc()
            self._drop(None)
            return
        self.service.handshaking += 1
        self._counting = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.config.tcp_handshake_timeout_seconds, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.last_received = self.service.now
        try:
            if self._first:
                self._first = False
                if data[0] != _TLS_HANDSHAKE_RECORD:
                    self._drop("plain_http" if data[:4] in _HTTP_METHODS else "garbage")
                    return
            if not self._established:
                held = self._incoming.pending + (len(self._hello) if self._hello is not None else 0)
                if held + len(data) > MAX_HANDSHAKE_BYTES:
                    self._drop("handshake_too_large")
                    return
            if self._hello is not None:
                self._hello += data
                size = first_record_size(self._hello)
                if size is None or (size <= RECORD_HEADER + MAX_RECORD and len(self._hello) < size):
                    return  # the rest of the ClientHello is on its way (the handshake deadline runs)
                data, self._hello = bytes(self._hello), None
                self._choose_context(parse_client_hello(data))
            self._incoming.write(data)
            if not self._established:
                self._handshake()
                if not self._established:
                    return
            self._read()
        except Exception:
            self.server.log.exception("internal_error", transport="tcp", address=str(self.address))
            self._drop("internal_error")

    def eof_received(self) -> bool | None:
        if self.web is not None:
            self.web.eof_received()
        if self.peer is not None and self._decoder.buffered and not self._closed:
            self.server.metrics.tcp_refused.labels("truncated").inc()
        return None  # close our side too

    def cancel_timer(self) -> None:
        """Cancel the handshake timeout, if it is still pending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()
        self._end_handshake()
        self._closed = True
        self.dead = True
        self.service.clients.discard(self)
        if self._web_counted:
            self._web_counted = False
            self.service.web_closed(self.address)
        if self.web is not None:
            self.web.connection_lost(exc)
        peer = self.peer
        if peer is not None:
            self.server._connection_lost(peer)  # noqa: SLF001 - the server's own callback

    def pause_writing(self) -> None:
        self._paused = True
        if self.web is not None:
            self.web.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self.web is not None:
            self.web.resume_writing()

    # --- inside ---------------------------------------------------------------------------------

    def _choose_context(self, hello: ClientHello | None) -> None:
        """The ClientHello is in: the domain certificate for a browser of the web page, else ours."""
        web = self.service.web
        if web is not None and web.tls_context is not None and self.service.wants_web(hello):
            self._web_tls = True
            self._tls = web.tls_context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    _counting = False  # counted in service.handshaking

    def _end_handshake(self) -> None:
        if self._counting:
            self._counting = False
            self.service.handshaking -= 1

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            reason = "wrong_alpn" if "APPLICATION_PROTOCOL" in str(exc).upper() else "tls_failed"
            self._flush(force=True)
            self._drop(reason)
            return
        self._flush()
        alpn = self._tls.selected_alpn_protocol()
        if self._web_tls:
            if alpn not in (None, "http/1.1"):
                self._drop("wrong_alpn")
                return
            self._start_web()
            return
        if alpn != BEACON_TCP_ALPN:
            self._drop("wrong_alpn")
            return
        self.cancel_timer()
        self._end_handshake()
        self._established = True
        self.last_received = self.service.now
        self.server._connection_started(self, self.address)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
        peer = self.peer
        if peer is not None:
            self.server._handshake_completed(peer)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients

    def _start_web(self) -> None:
        """Hand the connection to the web service (HTTP, then maybe a WebSocket)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_handshake()
        web = self.service.web
        if web is None or not web.serving:
            self._drop("stopping")
            return
        if not self.service.web_opened(self.address):
            self._drop("too_many_connections")
            return
        self._web_counted = True
        self._established = True
        self.last_received = self.service.now
        self.web = web.accept(_WebTransport(self))
        if self._paused:
            self.web.pause_writing()

    def _read(self) -> None:
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify: answer it, then close
                self._leave_and_close()
                return
            except ssl.SSLError:
                self._drop("tls_failed")
                return
            if not chunk:  # close_notify received (SSLObject.read returns b"" then)
                self._eof = True
                break
            chunks.append(chunk)
        self._flush()  # TLS 1.3 may answer (key update)
        peer = self.peer
        if self.web is not None:
            for chunk in chunks:
                if self._closed:
                    return
                self.web.data_received(chunk)
        elif peer is not None and chunks:
            self._handle(peer, chunks)
        if self._eof and not self._closed:
            if self.web is not None:
                self.web.eof_received()
            if self._decoder.buffered:
                self.server.metrics.tcp_refused.labels("truncated").inc()
            self._leave_and_close()

    _eof = False

    def _handle(self, peer: _Client, chunks: list[bytes]) -> None:
        server = self.server
        for chunk in chunks:
            if peer.closing:
                return
            try:
                items = self._decoder.feed(chunk)
            except WireError as exc:
                reason = "too_large" if exc.code == ErrorCode.FRAME_TOO_LARGE else "malformed"
                server.metrics.tcp_refused.labels(reason).inc()
                server._reject(peer, exc.code, exc.message)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
                return
            for item in items:
                if peer.closing:
                    return
                if isinstance(item, bytes):
                    if peer.hello:
                        server._relay_datagram(self, item, self.address)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
                    continue
                try:
                    server._on_message(peer, item)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
                except Exception:
                    server.log.exception("internal_error", conn=peer.key)
                    server._reject(peer, ErrorCode.INTERNAL, "internal error")  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
                    return

    def _leave_and_close(self) -> None:
        peer = self.peer
        if peer is not None:
            self.server._leave(peer)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
        self.close()

    def _flush(self, *, force: bool = False) -> None:
        pending = self._outgoing.pending
        if pending and self.transport is not None and (force or not self.transport.is_closing()):
            self.transport.write(self._outgoing.read())

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self._established:
            self._drop("handshake_timeout")

    def _drop(self, reason: str | None) -> None:
        """Close before (or instead of) serving: counted under ``reason``, nothing logged above debug."""
        if reason is not None:
            self.server.metrics.tcp_refused.labels(reason).inc()
            self.server.log.debug("tcp_refused", reason=reason, address=str(self.address))
        peer = self.peer
        if peer is not None:
            self.server._leave(peer)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
        self._closed = True
        if self.transport is not None:
            self.transport.abort() if reason is not None else self.transport.close()


class _WebTransport(asyncio.Transport):
    """The plaintext side of a web connection: what the web service writes goes out as TLS records."""

    def __init__(self, client: TcpClient) -> None:
        super().__init__()
        self._client = client

    def write(self, data: bytes | bytearray | memoryview) -> None:
        client = self._client
        if client._closed:  # noqa: SLF001 - the client this transport belongs to
            return
        client.send_frame(bytes(data))

    def can_write_eof(self) -> bool:
        return False  # TLS: websockets closes instead

    def close(self) -> None:
        self._client.close()

    def abort(self) -> None:
        client = self._client
        client._closed = True  # noqa: SLF001 - the client this transport belongs to
        if client.transport is not None:
            client.transport.abort()

    def is_closing(self) -> bool:
        client = self._client
        return client._closed or client.transport is None or client.transport.is_closing()  # noqa: SLF001 - the client this transport belongs to

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        client = self._client
        if name == "ssl_object":
            return client._tls  # noqa: SLF001 - the client this transport belongs to
        return client.transport.get_extra_info(name, default) if client.transport is not None else default

    def pause_reading(self) -> None:
        if self._client.transport is not None:
            self._client.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._client.transport is not None:
            self._client.transport.resume_reading()

    def is_reading(self) -> bool:
        return self._client.transport is not None and self._client.transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._client.transport is not None:
            self._client.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._client.unsent_bytes()


class TcpService:
    """The TCP listeners of one beacon (and, with ``web``, the web page's HTTPS on them)."""

    def __init__(self, server: BeaconServer, bundle: CertificateBundle, web: WebEndpoint | None = None) -> None:
        self.server = server
        self.context = server_context(bundle)
        self.web = web if web is not None and web.tls_context is not None else None
        self.web_connections = 0  # connections handed to the web service, open now
        self.listeners: list[asyncio.Server] = []
        self.clients: set[TcpClient] = set()
        self.handshaking = 0
        self.relay_backlog_drops = 0
        self.now = 0.0  # loop time, refreshed by the sweep (data_received stamps with it)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def addresses(self) -> list[Addr]:
        return [normalize_address(s.getsockname()) for listener in self.listeners for s in listener.sockets]

    async def listen(self, family: socket.AddressFamily, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port``. ``reuse_port``: the workers of one beacon (beacon.workers) each
        listen on the same port and the kernel spreads new connections over them (any worker can
        serve any TCP client: the meeting table is shared)."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            raise OSError(exc.errno, f"cannot listen on TCP {where}: {exc.strerror or exc}") from exc
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(self._new_client, sock=sock)
        self.listeners.append(listener)
        if self._sweeper is None:
            self.now = loop.time()
            self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close connections silent for longer than idle_timeout_seconds (clients ping every
        10 s; a peer that vanished without a FIN would otherwise hold its place forever)."""
        loop = asyncio.get_running_loop()
        idle = self.server.config.idle_timeout_seconds
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.now = now = loop.time()
            for client in [c for c in self.clients if c.peer is not None and now - c.last_received > idle]:
                peer = client.peer
                if peer is not None and not peer.closing:
                    self.server._reject(peer, ErrorCode.IDLE_TIMEOUT, "idle", wait=False)  # noqa: SLF001 - the beacon server's own hooks for its TCP clients

    def wants_web(self, hello: ClientHello | None) -> bool:
        """A browser of the page: its SNI is a name of the domain certificate and it offers HTTP (or no
        ALPN); never a client that offers our ALPN, whatever name it sends (peers pin our certificate)."""
        web = self.web
        if web is None or hello is None or hello.server_name is None or BEACON_TCP_ALPN in hello.alpn:
            return False
        if hello.alpn and not any(protocol in WEB_ALPNS for protocol in hello.alpn):
            return False
        return name_matches(hello.server_name, web.hostnames)

    def web_opened(self, address: Addr) -> bool:
        """Count a web connection against the per-IP cap shared with peers (False: over it)."""
        counts = self.server._ip_counts  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
        key = ip_key(address[0])
        if counts.get(key) >= self.server.config.max_connections_per_ip:
            return False
        counts.add(key)
        self.web_connections += 1
        return True

    def web_closed(self, address: Addr) -> None:
        self.server._ip_counts.remove(ip_key(address[0]))  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
        self.web_connections -= 1

    def _new_client(self) -> TcpClient:
        client = TcpClient(self)
        self.clients.add(client)
        return client

    def admit(self, address: Addr) -> str | None:
        """None to go on with the TLS handshake, else the reason to refuse (a metric label)."""
        server = self.server
        if server._stopping:  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
            return "stopping"
        if len(server._clients) + self.handshaking + self.web_connections >= server.config.max_connections:  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
            return "max_connections"
        loop = asyncio.get_running_loop()
        if not server._handshakes.take(ip_key(address[0]), loop.time()):  # noqa: SLF001 - the beacon server's own hooks for its TCP clients
            return "rate_limited"
        return None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for listener in self.listeners:
            listener.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()
        self.clients.clear()
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await wait_for(listener.wait_closed(), 2.0)
        self.listeners.clear()
