"""A UDP socket as an asyncio datagram transport that only sends.

The loops' own datagram transports read their socket themselves, one datagram per call into
Python, and never hand over the kernel's ancillary data — so a UDP GRO read (several datagrams of
one source in one buffer) cannot reach us through them, and uvloop's cannot even pause reading to
let someone else read. With :class:`SendingTransport` the endpoint reads the socket itself
(:meth:`discretpeer.endpoint.Endpoint.serve_socket`, through the loop's public ``add_reader``, so
on any loop); the transport sends, and queues what the kernel refuses (a full send buffer) until
the socket is writable again. The queue is bounded: beyond it datagrams are dropped, as a full
socket buffer would drop them (QUIC retransmits what mattered).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

MAX_QUEUED_BYTES = 4 * 1024 * 1024  # what waits for a writable socket; beyond it, dropped


class SendingTransport(asyncio.DatagramTransport):
    """Sends datagrams on ``sock`` for ``protocol``; the protocol's owner reads the socket."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._queued_bytes = 0
        self._max_queued_bytes = max_queued_bytes
        self._closing = False
        self.dropped = 0  # datagrams refused because the queue was full
        self._extra = {"socket": sock, "sockname": sock.getsockname(), "peername": None}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._queued_bytes

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
            except OSError as exc:  # e.g. an ICMP error of an earlier datagram, reported now
                self._protocol.error_received(exc)
                return
        if self._queued_bytes + len(data) > self._max_queued_bytes:
            self.dropped += 1
            return
        self._queue.append((bytes(data), addr))
        self._queued_bytes += len(data)

    def _write_ready(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            queue.popleft()
            self._queued_bytes -= len(data)
        self._loop.remove_writer(self._fd)

    def close(self) -> None:
        """Stop reading and writing; the socket closes (and the protocol hears of it) next."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._queue.clear()
        self._queued_bytes = 0
        self._loop.call_soon(self._closed)

    def abort(self) -> None:
        self.close()

    def _closed(self) -> None:
        try:
            self._protocol.connection_lost(None)
        finally:
            self._sock.close()
