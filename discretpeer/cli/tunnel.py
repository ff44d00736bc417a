"""The tunnel stream header: how ``discretpeer forward``/``pipe`` ask ``expose`` for a TCP service.

Sans-I/O: plain functions and a decoder fed bytes; the CLI does the reading and writing.

Every TCP connection carried over a peer connection is one bidirectional QUIC stream. The side
that opens the stream (the forwarding side) sends one REQUEST frame; the exposing side answers one
RESPONSE frame; after an OK both carry raw bytes, and EOF in one direction is the stream FIN
(a TCP half-close on the other side). After an error response the exposing side ends the stream.
The forwarding side may send data right after its request (optimistic data): it is delivered to
the service after an OK and discarded otherwise.

Frame (network byte order)::

    "DPT" | u8 version | u8 type | u16 body length | body
    type 1 REQUEST:  u16 port                      (exactly 2 bytes; 0 = "the only exposed port")
    type 2 RESPONSE: u8 status | UTF-8 message      (at most MAX_MESSAGE bytes, one printable line)

Validation is strict: wrong magic, unknown version or type, a body of the wrong size, a message
that is not UTF-8 or contains control characters are all :class:`TunnelError`. An unknown
status code is kept (a newer peer may have more reasons to refuse) and is simply not OK.
"""

from __future__ import annotations

import enum
import struct
import unicodedata
from dataclasses import dataclass

MAGIC = b"DPT"
VERSION = 1
HEADER = struct.Struct("!3sBBH")
HEADER_SIZE = HEADER.size  # 7
MAX_MESSAGE = 400
MAX_BODY = 1 + MAX_MESSAGE
REQUEST_BODY = struct.Struct("!H")


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2


class Status(enum.IntEnum):
    """Why the exposing side answered as it did (sent as one byte)."""

    OK = 0
    NOT_EXPOSED = 1  # the requested port is not exposed
    REFUSED = 2  # the local service refused the TCP connection
    UNREACHABLE = 3  # the local service could not be reached (timeout, no route, ...)
    BAD_REQUEST = 4  # the request frame was malformed
    UNSUPPORTED_VERSION = 5  # the request used a version this side does not speak
    BUSY = 6  # too many tunnels open at once
    AMBIGUOUS_PORT = 7  # port 0 asked but several ports are exposed
    NOT_ALLOWED = 8  # this peer may not use that port


class TunnelError(ValueError):
    """A malformed or unsupported tunnel frame. ``status`` is what to answer the sender."""

    def __init__(self, message: str, status: Status = Status.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    port: int  # 0 = the only exposed port

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 0xFFFF:
            raise TunnelError(f"invalid port {self.port!r}")


@dataclass(frozen=True)
class Response:
    status: int
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or isinstance(self.status, bool) or not 0 <= self.status <= 0xFF:
            raise TunnelError(f"invalid status {self.status!r}")
        _check_message(self.message)
        if len(self.message.encode("utf-8")) > MAX_MESSAGE:
            raise TunnelError(f"message longer than {MAX_MESSAGE} bytes")

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def reason(self) -> str:
        """The status as a name (``NOT_EXPOSED``) or ``status 42`` for codes we do not know."""
        try:
            return Status(self.status).name
        except ValueError:
            return f"status {self.status}"

    def describe(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else self.reason


Frame = Request | Response


def _check_message(message: str) -> None:
    if not isinstance(message, str):
        raise TunnelError("message must be text")
    for char in message:
        # one printable line: no control characters (terminal escapes), no separators but space
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and char != "\u200d"):
            raise TunnelError(f"message contains the control character {char!r}")


def truncate_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """Make any text a valid response message: control characters become spaces, cut to ``limit``
    UTF-8 bytes without splitting a character."""
    cleaned = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp", "Cf") and c != "\u200d" else c for c in message
    )
    raw = cleaned.encode("utf-8")[:limit]
    return raw.decode("utf-8", errors="ignore")


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Request):
        body = REQUEST_BODY.pack(frame.port)
        kind = FrameType.REQUEST
    elif isinstance(frame, Response):
        body = bytes([frame.status]) + frame.message.encode("utf-8")
        kind = FrameType.RESPONSE
    else:
        raise TypeError(f"not a tunnel frame: {frame!r}")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def encode_request(port: int) -> bytes:
    return encode(Request(port))


def encode_response(status: Status | int, message: str = "") -> bytes:
    return encode(Response(int(status), truncate_message(message)))


def _parse_body(kind: FrameType, body: bytes) -> Frame:
    if kind is FrameType.REQUEST:
        if len(body) != REQUEST_BODY.size:
            raise TunnelError(f"request body must be {REQUEST_BODY.size} bytes, got {len(body)}")
        (port,) = REQUEST_BODY.unpack(body)
        return Request(port)
    if not body:
        raise TunnelError("response without a status")
    try:
        message = body[1:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TunnelError("response message is not UTF-8") from exc
    return Response(body[0], message)


class Decoder:
    """Reads exactly one frame of the ``expect`` type from a byte stream fed in any chunks.

    ``feed(data)`` returns the frame once complete (None before); bytes after the frame are kept in
    :attr:`rest` (they are tunnel data). Garbage is rejected as early as possible: a wrong magic
    after its first byte, a bad version, type or length as soon as the header is complete.
    ``needed`` says how many more bytes the frame needs (read no more than that to leave the
    tunnel data in the stream).
    """

    def __init__(self, expect: FrameType) -> None:
        self.expect = expect
        self._buffer = bytearray()
        self._body_length: int | None = None
        self.frame: Frame | None = None
        self.rest = b""

    @property
    def done(self) -> bool:
        return self.frame is not None

    @property
    def needed(self) -> int:
        if self.frame is not None:
            return 0
        if self._body_length is None:
            return HEADER_SIZE - len(self._buffer)
        return HEADER_SIZE + self._body_length - len(self._buffer)

    def feed(self, data: bytes) -> Frame | None:
        if self.frame is not None:
            self.rest += data
            return self.frame
        self._buffer += data
        if self._body_length is None:
            head = bytes(self._buffer[: len(MAGIC)])
            if head != MAGIC[: len(head)]:
                raise TunnelError("not a discretpeer tunnel stream (bad magic)")
            if len(self._buffer) < HEADER_SIZE:
                return None
            _, version, kind, length = HEADER.unpack_from(self._buffer)
            if version != VERSION:
                raise TunnelError(
                    f"unsupported tunnel version {version} (this side speaks {VERSION})", Status.UNSUPPORTED_VERSION
                )
            if kind != self.expect:
                try:
                    name = FrameType(kind).name
                except ValueError:
                    name = f"type {kind}"
                raise TunnelError(f"expected a {self.expect.name} frame, got {name}")
            limit = REQUEST_BODY.size if self.expect is FrameType.REQUEST else MAX_BODY
            if length > limit or (self.expect is FrameType.REQUEST and length != limit):
                raise TunnelError(f"{self.expect.name} body of {length} bytes (limit {limit})")
            self._body_length = length
        end = HEADER_SIZE + self._body_length
        if len(self._buffer) < end:
            return None
        self.frame = _parse_body(self.expect, bytes(self._buffer[HEADER_SIZE:end]))
        self.rest = bytes(self._buffer[end:])
        self._buffer.clear()
        return self.frame


def decode(data: bytes, expect: FrameType) -> tuple[Frame, bytes]:
    """Decode one whole frame from ``data``; returns (frame, the bytes after it)."""
    decoder = Decoder(expect)
    frame = decoder.feed(data)
    if frame is None:
        raise TunnelError(f"truncated {expect.name} frame ({decoder.needed} more bytes needed)")
    return frame, decoder.rest
