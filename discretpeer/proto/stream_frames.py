"""The beacon protocol on a TLS/TCP stream (sans-I/O).

On QUIC, control messages travel on stream 0 and relay datagrams as UDP datagrams. A TCP
connection has one byte stream for both, so each item is length-prefixed::

    u16 length | payload            (length 1..65535)

A payload whose first byte is :data:`~discretpeer.proto.relay_frame.RELAY_DATA` (0x20) is a relay
datagram exactly as it would travel over UDP (header + the peers' QUIC packet); any other payload
is one beacon wire message (type byte + body, as in :mod:`discretpeer.proto.wire`, whose types are all
below 0x20). So the control frames are byte for byte those of stream 0.

The decoder keeps at most one item buffered and raises :class:`~discretpeer.proto.wire.WireError` on
the first invalid one; the stream is then unusable (the caller counts it and closes).
"""

from __future__ import annotations

import struct

from discretpeer.proto.relay_frame import MAX_RELAY_PAYLOAD, RELAY_DATA, RELAY_HEADER_SIZE
from discretpeer.proto.wire import MAX_FRAME, ErrorCode, Message, WireError, decode_body, encode

MAX_DATAGRAM = RELAY_HEADER_SIZE + MAX_RELAY_PAYLOAD
BEACON_TCP_ALPN = "discretpeer-beacon-tcp/1"  # distinct from QUIC's: a TLS client of one never speaks the other

Item = Message | bytes  # bytes: a relay datagram


def encode_message(message: Message) -> bytes:
    """A wire message as a stream item (the wire frame already is ``u16 length | body``)."""
    return encode(message)


def encode_datagram(datagram: bytes) -> bytes:
    """A relay datagram as a stream item."""
    if not datagram or datagram[0] != RELAY_DATA:
        raise ValueError("not a relay datagram")
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError("relay datagram too large")
    return struct.pack("!H", len(datagram)) + datagram


class StreamDecoder:
    """Bytes in, items out: messages (decoded) and relay datagrams (bytes, unparsed).

    ``max_frame`` bounds a control message, ``max_datagram`` a relay datagram."""

    __slots__ = ("max_frame", "max_datagram", "_buffer")

    def __init__(self, max_frame: int = MAX_FRAME, max_datagram: int = MAX_DATAGRAM) -> None:
        self.max_frame = max_frame
        self.max_datagram = max_datagram
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Item]:
        buffer = self._buffer
        buffer += data
        items: list[Item] = []
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if length == 0:
                raise WireError(ErrorCode.MALFORMED, "empty frame")
            if len(buffer) >= 3:
                # checked as soon as the kind is known, not after the whole item arrived: an
                # oversized prefix is refused before its bytes are buffered
                limit = self.max_datagram if buffer[2] == RELAY_DATA else self.max_frame
                if length > limit:
                    raise WireError(ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes (max {limit})")
            if len(buffer) < 2 + length:
                break
            payload = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            if payload[0] == RELAY_DATA:
                if length <= RELAY_HEADER_SIZE:
                    raise WireError(ErrorCode.MALFORMED, "relay datagram without payload")
                items.append(payload)
            else:
                items.append(decode_body(payload))
        return items

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete item (a stream ending with some is truncated)."""
        return len(self._buffer)
