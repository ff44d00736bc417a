"""Hostile clients for the beacon's adversarial tests and the `attacks` benchmark.

Real aioquic client connections that also write frames no well-behaved client would: a queue of
raw (frame type, body) pairs is written into the next 1-RTT packets, ahead of anything else. Plus
raw-UDP helpers (junk Initials, a valid Initial that never continues, unknown versions).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilderStop

from discretpeer.endpoint import Endpoint
from discretpeer.proto import wire

STREAM = 0x08  # | OFF 0x04 | LEN 0x02 | FIN 0x01
RESET_STREAM = 0x04
STOP_SENDING = 0x05


def varint(value: int) -> bytes:
    buf = Buffer(capacity=8)
    buf.push_uint_var(value)
    return buf.data


def stream_frame(stream_id: int, offset: int, data: bytes, fin: bool = False) -> tuple[int, bytes]:
    return STREAM | 0x04 | 0x02 | int(fin), varint(stream_id) + varint(offset) + varint(len(data)) + data


def stop_sending(stream_id: int, code: int = 0) -> tuple[int, bytes]:
    return STOP_SENDING, varint(stream_id) + varint(code)


def reset_stream(stream_id: int, code: int = 0, final_size: int = 0) -> tuple[int, bytes]:
    return RESET_STREAM, varint(stream_id) + varint(code) + varint(final_size)


class InjectingConnection(QuicConnection):
    """A client QuicConnection that writes the raw frames queued in ``inject`` first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inject: collections.deque[tuple[int, bytes]] = collections.deque()

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        crypto = self._cryptos[tls.Epoch.ONE_RTT]
        if self.inject and self._handshake_complete and crypto.send.is_valid():
            try:
                while self.inject:
                    builder.start_packet(QuicPacketType.ONE_RTT, crypto)
                    wrote = False
                    while self.inject:
                        frame_type, body = self.inject[0]
                        try:
                            buf = builder.start_frame(frame_type, capacity=len(body) + 8)
                        except QuicPacketBuilderStop:
                            if not wrote:
                                raise
                            break  # packet full: the next one
                        buf.push_bytes(body)
                        self.inject.popleft()
                        wrote = True
            except QuicPacketBuilderStop:
                pass  # congestion window or datagram full: the rest goes with the next transmit
        super()._write_application(builder, network_path, now)


class Hostile:
    """A connected client (Hello done unless ``hello=False``) that can inject raw frames."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.quic: InjectingConnection = client.protocol._quic

    @classmethod
    async def connect(cls, client_class: Any, address: tuple[str, int], fingerprint: str, **kwargs: Any) -> Hostile:
        endpoint = await Endpoint.open("127.0.0.1", 0, connection_class=InjectingConnection)
        try:
            client = await client_class.connect(address, fingerprint, endpoint=endpoint, **kwargs)
        except BaseException:
            endpoint.close()
            raise
        client.owns_endpoint = True
        return cls(client)

    def send_frames(self, *frames: tuple[int, bytes]) -> None:
        self.quic.inject.extend(frames)
        self.client.protocol.transmit()

    @property
    def closed(self) -> bool:
        return self.client.protocol.terminated is not None

    def _stream_limit(self, stream_id: int) -> int:
        stream = self.quic._streams.get(stream_id)
        if stream is not None:
            return stream.max_stream_data_remote
        if stream_id & 2:
            return self.quic._remote_max_stream_data_uni
        return self.quic._remote_max_stream_data_bidi_remote

    async def out_of_order(
        self, streams: tuple[int, ...] = (0,), rounds: int = 12, pause: float = 0.05, stop: Any = None
    ) -> int:
        """The memory attack: one byte at the highest offset the beacon's credit allows, on each
        of ``streams``, then wait for the beacon to raise its limits; ``rounds`` times (or until
        ``stop()`` says so, or the connection is closed). Returns the highest offset reached."""
        quic = self.quic
        for stream_id in streams:  # track MAX_STREAM_DATA for these streams on our side too
            if stream_id not in quic._streams:
                # ValueError: the beacon allows no such stream; the frames go anyway
                with contextlib.suppress(ValueError):
                    quic._get_or_create_stream_for_send(stream_id)
        sent = {stream_id: 4096 if stream_id == 0 else 0 for stream_id in streams}  # 0: past the Hello
        for _ in range(rounds):
            if self.closed or (stop is not None and stop()):
                break
            for stream_id in streams:
                room = quic._remote_max_data - sum(sent.values())
                end = min(self._stream_limit(stream_id), sent[stream_id] + room)
                if end > sent[stream_id]:
                    self.quic.inject.append(stream_frame(stream_id, end - 1, b"x"))
                    sent[stream_id] = end
            self.client.protocol.transmit()
            await asyncio.sleep(pause)
        return max(sent.values())

    async def close(self) -> None:
        await self.client.close()


# --- raw UDP ------------------------------------------------------------------------------


def client_initial(server: tuple[str, int]) -> bytes:
    """One valid client Initial datagram (a real ClientHello) for ``server``."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[wire.BEACON_ALPN], verify_mode=ssl.CERT_NONE)
    quic = QuicConnection(configuration=configuration)
    quic.connect(server, now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


def junk_initial(size: int = 1200, version: int = 1) -> bytes:
    """Random bytes behind a plausible QUIC Initial header: it cannot be decrypted."""
    dcid = os.urandom(8)
    scid = os.urandom(8)
    header = bytes([0xC0]) + version.to_bytes(4, "big") + bytes([8]) + dcid + bytes([8]) + scid + b"\x00"
    length = max(0, size - len(header) - 2)
    return header + (0x4000 | length).to_bytes(2, "big") + os.urandom(length)


def unknown_version(size: int, version: int = 0x1A2A3A4A) -> bytes:
    """A long-header packet of ``size`` bytes (>= 29) in a version the beacon does not speak."""
    return junk_initial(size, version)


class RawSocket:
    """A plain UDP socket on 127.0.0.1 counting bytes both ways."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sent = 0
        self.received = 0
        self.datagrams_received = 0

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        self.sock.sendto(data, address)
        self.sent += len(data)

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            self.received += len(data)
            self.datagrams_received += 1

    async def collect(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            self.drain()
            await asyncio.sleep(0.02)
        self.drain()

    def close(self) -> None:
        self.sock.close()
