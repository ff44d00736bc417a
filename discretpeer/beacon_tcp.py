"""A peer's beacon connection over TLS 1.3 on TCP, direct or through an HTTP CONNECT proxy.

The beacon is pinned exactly as over QUIC: SHA-256 of the certificate DER it presents, checked
after the handshake and before a single frame is sent (``CERT_NONE``, no CA, no hostname). A
proxy that intercepts TLS presents another certificate: the pin fails and the error says the
proxy is the likely cause. Frames are :mod:`discretpeer.proto.stream_frames` items.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from certs import certificate_fingerprint
from discretpeer.addresses import Addr
from discretpeer.loop_batch import LoopBatch
from discretpeer.proto.stream_frames import BEACON_TCP_ALPN, Item, StreamDecoder, encode_datagram
from discretpeer.proto.wire import Message, WireError, encode
from discretpeer.proxy import ProxySpec, open_tunnel
from discretpeer.tasks import wait_for

CONNECT_TIMEOUT = 5.0
MAX_UNSENT_DATAGRAM_BYTES = 262144  # relay datagrams beyond are dropped, like a full UDP path


class TlsPinMismatch(ConnectionError):
    """The TLS certificate is not the pinned one."""


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by hash instead
    context.set_alpn_protocols([BEACON_TCP_ALPN])
    return context


class TcpChannel:
    """An established, pinned TLS connection to a beacon: messages and relay datagrams."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: Addr,
        proxy: ProxySpec | None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.address = address
        self.proxy = proxy
        self.decoder = StreamDecoder()
        self.datagrams_dropped = 0
        self._closed = False
        self._batch = LoopBatch(self._write_batch)

    @property
    def transport_name(self) -> str:
        return "tcp via proxy" if self.proxy is not None else "tcp"

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    def send(self, message: Message) -> bool:
        if self.closed:
            return False
        self._writer.write(encode(message))
        return True

    def send_datagram(self, datagram: bytes) -> None:
        """A relay datagram (dropped when the socket is backed up: QUIC above recovers)."""
        if self.closed:
            return
        transport = self._writer.transport
        if transport.get_write_buffer_size() + self._batch.size > MAX_UNSENT_DATAGRAM_BYTES:
            self.datagrams_dropped += 1
            return
        try:
            item = encode_datagram(datagram)
        except ValueError:
            self.datagrams_dropped += 1
            return
        self._batch.add(item)  # one write per loop iteration (one TLS record per 16 KB, not per datagram)

    def _write_batch(self, data: bytes) -> None:
        if not self.closed:
            self._writer.write(data)

    async def receive(self) -> list[Item]:
        """The next items (at least one); ConnectionError when the beacon closed."""
        while True:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("beacon closed the TLS connection")
            try:
                items = self.decoder.feed(data)
            except WireError as exc:
                raise ConnectionError(f"beacon sent a bad frame: {exc}") from exc
            if items:
                return items

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()


async def open_channel(
    host: str,
    port: int,
    cert_hash: str,
    *,
    proxy: ProxySpec | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> TcpChannel:
    """Connect (through ``proxy`` if given), TLS 1.3 with our ALPN, check the pin."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if proxy is not None:
        reader, writer = await open_tunnel(proxy, host, port, timeout)
    else:
        try:
            reader, writer = await wait_for(asyncio.open_connection(host, port), timeout)
        except TimeoutError:
            raise ConnectionError(f"TCP {where}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"TCP {where}: {exc.strerror or exc}") from None
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await wait_for(writer.start_tls(client_context()), timeout)
        except TimeoutError:
            via = f" through {proxy}" if proxy is not None else ""
            raise ConnectionError(f"TLS to {where}{via}: no handshake within {timeout:g} s") from None
        except (ssl.SSLError, OSError) as exc:
            via = f" through {proxy}" if proxy is not None else ""
            raise ConnectionError(f"TLS to {where}{via} failed: {exc}") from None
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        fingerprint = certificate_fingerprint(der) if der else None
        if fingerprint != cert_hash:
            if proxy is not None:
                raise TlsPinMismatch(
                    f"{proxy} intercepts TLS: the certificate it shows for beacon {where} is not the pinned one "
                    f"(hash {fingerprint}, pinned {cert_hash})"
                )
            raise TlsPinMismatch(f"beacon {where} (TLS) certificate hash is {fingerprint}, pinned {cert_hash}")
        if tls.selected_alpn_protocol() != BEACON_TCP_ALPN:
            raise ConnectionError(f"TLS to {where}: the server does not speak {BEACON_TCP_ALPN}")
    except BaseException:
        writer.close()
        raise
    return TcpChannel(reader, writer, (host, port), proxy)
