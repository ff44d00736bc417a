"""Carry bytes between a local side (a TCP socket, or stdin/stdout) and a tunnel stream.

Each direction ends with an EOF that is propagated as a half-close (TCP ``shutdown(SHUT_WR)`` /
QUIC FIN); the splice is over when both directions ended (or, for ``pipe``, when the remote side
ended). An error on either side aborts the local side (TCP RST) so nothing looks like a clean end
that was not one; the peer connection dropping under a stream counts as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from discretpeer.cli.tunnel import Decoder, Frame, FrameType
from discretpeer.tasks import cancel_and_wait, wait_for

CHUNK = 64 * 1024
# How long a reset waits for an accepted client that has not spoken yet (see TcpSide.reset).
RESET_GRACE = 1.0
STDIN_CHUNKS_IN_FLIGHT = 4


@dataclass
class Traffic:
    """Byte counters of one tunnel (``sent``: towards the peer; ``received``: from it), also
    added to ``parent`` (e.g. the peer connection's totals)."""

    sent: int = 0
    received: int = 0
    parent: Traffic | None = None

    def add_sent(self, count: int) -> None:
        self.sent += count
        if self.parent is not None:
            self.parent.add_sent(count)

    def add_received(self, count: int) -> None:
        self.received += count
        if self.parent is not None:
            self.parent.add_received(count)


class LocalSide(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def write_eof(self) -> None: ...
    def abort(self) -> None: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


class TcpSide:
    """A TCP connection as a local side. ``reset_grace``: for a connection we accepted, how long
    :meth:`reset` may wait for the client program to show it is past its ``connect()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, reset_grace: float = 0.0) -> None:
        self.reader = reader
        self.writer = writer
        self.reset_grace = reset_grace
        self._since = time.monotonic()
        self._heard = False  # the other end sent data or EOF: it saw its connect() succeed

    async def read(self) -> bytes:
        data = await self.reader.read(CHUNK)
        self._heard = True
        return data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        if not self.writer.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()

    def abort(self) -> None:
        """Reset the connection (RST) now: the client program sees an error, never a clean empty end."""
        reset_on_close(self.writer.transport)
        self.writer.transport.abort()

    async def reset(self) -> None:
        """Reset the connection, but not before the client program can have seen it established.

        The kernel completes the handshake before we accept; a client with a non-blocking
        ``connect()`` (curl, browsers) checks the outcome only when it next runs, and a RST that
        arrives first turns into a failed connect ("Couldn't connect to server", as if nothing
        listened). So until the client sent data or EOF, wait for that, at most ``reset_grace``
        from the accept, then reset."""
        wait = self.reset_grace - (time.monotonic() - self._since)
        try:
            if not self._heard and wait > 0:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await wait_for(self.reader.read(CHUNK), wait)
        finally:
            self.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await wait_for(self.writer.wait_closed(), 5.0)


def reset_on_close(transport: asyncio.BaseTransport) -> None:
    """SO_LINGER with a zero timeout: closing the socket sends a TCP RST instead of a FIN (a close
    with nothing unread would otherwise look like a clean end, e.g. curl's "Empty reply")."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class StdioSide:
    """stdin/stdout as a local side, through two daemon threads (blocking I/O on whatever the
    descriptors are: pipes, files, a terminal; no O_NONBLOCK set on descriptors shared with the
    parent, and a thread blocked in read() never delays the exit).

    :meth:`take` moves the data descriptor away from fd 1 and points fd 1 at stderr, so that
    nothing else (a stray print, a library) can ever write to the data channel.
    """

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._out_closing = False
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._credit = threading.Semaphore(STDIN_CHUNKS_IN_FLIGHT)
        self._reader = threading.Thread(target=self._read_loop, name="stdin", daemon=True)
        self._started = False
        self._outbox: queue.Queue[tuple[bytes, asyncio.Future[None]] | None] = queue.Queue()
        self._writer: threading.Thread | None = None

    @classmethod
    def take(cls) -> StdioSide:
        out_fd = os.dup(1)
        os.dup2(2, 1)
        return cls(0, out_fd)

    def _deliver(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, data)

    def _read_loop(self) -> None:
        while True:
            self._credit.acquire()
            try:
                data = os.read(self._in_fd, CHUNK)
            except OSError:
                data = b""
            self._deliver(data)
            if not data:
                return

    async def read(self) -> bytes:
        if not self._started:
            self._started = True
            self._reader.start()
        data = await self._inbox.get()
        self._credit.release()
        return data

    async def write(self, data: bytes) -> None:
        if self._out_closing:
            raise BrokenPipeError("stdout is closed")
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="stdout", daemon=True)
            self._writer.start()
        done: asyncio.Future[None] = self._loop.create_future()
        self._outbox.put((data, done))
        await done

    def _write_loop(self) -> None:
        # the only place that writes to or closes the data descriptor once started
        fd = self._out_fd
        while True:
            item = self._outbox.get()
            if item is None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                return
            data, done = item
            error: OSError | None = None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                error = exc
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_settle, done, error)

    async def write_eof(self) -> None:
        self._close_out()

    def abort(self) -> None:
        self._close_out()

    async def reset(self) -> None:
        self._close_out()

    def _close_out(self) -> None:
        """EOF for the reader of our stdout: the descriptor is closed after pending writes."""
        if self._out_closing:
            return
        self._out_closing = True
        if self._writer is None:
            with contextlib.suppress(OSError):
                os.close(self._out_fd)
        else:
            self._outbox.put(None)

    async def close(self) -> None:
        self._close_out()


def _settle(future: asyncio.Future[None], error: OSError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class SpliceError(Exception):
    pass


class LocalClosed(Exception):
    """The local side went away (client closed/reset, stdout reader gone): not an error to report."""


class Splice:
    """Both directions between ``local`` and a tunnel stream of ``conn``.

    ``start_up()`` may be called before the exposing side answered (optimistic data); ``run()``
    starts the other direction and returns None after a clean end, or the error text.
    """

    def __init__(
        self,
        local: Any,
        stream_reader: asyncio.StreamReader,
        stream_writer: asyncio.StreamWriter,
        conn: Any,
        traffic: Traffic | None = None,
        *,
        end_on_remote_eof: bool = False,
        closing_after_eof_is_clean: bool = False,
    ) -> None:
        self.local = local
        self.reader = stream_reader
        self.writer = stream_writer
        self.conn = conn
        self.traffic = traffic or Traffic()
        self.end_on_remote_eof = end_on_remote_eof
        self.closing_after_eof_is_clean = closing_after_eof_is_clean
        self._sent_eof = False
        self._up: asyncio.Task[None] | None = None

    def start_up(self) -> asyncio.Task[None]:
        if self._up is None:
            self._up = asyncio.ensure_future(self._local_to_stream())
        return self._up

    async def _local_to_stream(self) -> None:
        while True:
            try:
                data = await self.local.read()
            except ConnectionResetError as exc:
                raise LocalClosed(str(exc)) from exc
            if not data:
                break
            if self.conn.closed:
                break  # reported below
            self.writer.write(data)
            await self.writer.drain()
            self.traffic.add_sent(len(data))
        if self.conn.closed:
            raise SpliceError(f"peer connection lost ({self.conn.close_reason})")
        self.writer.write_eof()
        self._sent_eof = True

    async def _stream_to_local(self) -> None:
        while True:
            data = await self.reader.read(CHUNK)
            if not data:
                break
            try:
                await self.local.write(data)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise LocalClosed(str(exc)) from exc
            self.traffic.add_received(len(data))
        if self.conn.closed and not (self.closing_after_eof_is_clean and self._sent_eof):
            # (the exposing side: the other peer may close the whole connection right after our
            # FIN instead of sending its own - a pipe whose service ended does exactly that)
            raise SpliceError(f"peer connection lost ({self.conn.close_reason})")
        await self.local.write_eof()

    async def run(self) -> str | None:
        up = self.start_up()
        down = asyncio.ensure_future(self._stream_to_local())
        pending: set[asyncio.Future[None]] = {up, down}
        error: str | None = None
        aborted = False
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if isinstance(exc, LocalClosed):
                        aborted = True
                    elif exc is not None and error is None:
                        error = str(exc) or type(exc).__name__
                if aborted or error is not None or (self.end_on_remote_eof and down in done):
                    break
        finally:
            await cancel_and_wait(*pending)
            if aborted:
                self.local.abort()  # the local side is gone already
            elif error is not None:
                await self.local.reset()
            with contextlib.suppress(Exception):
                self.writer.write_eof()  # no-op if already sent
            with contextlib.suppress(Exception):
                await self.local.close()
        return error


async def read_frame(reader: asyncio.StreamReader, expect: FrameType, timeout: float) -> Frame:
    """Read exactly one tunnel frame (never a byte of the data after it).

    Raises :class:`~discretpeer.cli.tunnel.TunnelError`, ``asyncio.IncompleteReadError`` (EOF first)
    or ``TimeoutError``."""
    decoder = Decoder(expect)

    async def read() -> Frame:
        while True:
            frame = decoder.feed(await reader.readexactly(decoder.needed))
            if frame is not None:
                return frame

    return await wait_for(read(), timeout)
