"""Beacon protocol wire format, shared by the beacon and the peers (sans-I/O).

Carried on the first client-initiated bidirectional QUIC stream (id 0) of a connection whose
ALPN is :data:`BEACON_ALPN`. Every frame is::

    u16 length | u8 type | body          (length counts type + body, 1..MAX_FRAME)

All integers are big-endian. Lists are ``u8 count`` then items; strings are ``u16 length`` then
UTF-8; an address is ``u8 family (4|6) | 4 or 16 bytes | u16 port``. Any violation raises
:class:`WireError` with an :class:`ErrorCode`, so a receiver can answer with an ``Error`` frame
naming what was wrong and close, instead of crashing.

The first frame of a client is :class:`Hello`; the beacon answers :class:`Welcome` (or an
``Error`` with ``UNSUPPORTED_VERSION``). Version negotiation is by the u16 ``version``: the beacon
accepts versions ``MIN_VERSION..PROTOCOL_VERSION`` and speaks the client's version on that
connection (its Welcome carries it). A client whose version a beacon refuses tries again with
``MIN_VERSION``.

Versions:
  1. the base protocol.
  2. the optional trailing fields of the NAT-behaviour discovery: ``Welcome.behaviour_port``,
     ``Announce.mapping``, ``Introduction.mapping`` (a version-1 decoder refuses trailing bytes,
     so a beacon sends them only on version-2 connections).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from discretpeer.addresses import Addr, unmap_ip

PROTOCOL_VERSION = 2
MIN_VERSION = 1
BEHAVIOUR_VERSION = 2  # the first version with the NAT-behaviour fields
BEACON_ALPN = "discretpeer-beacon/1"
PEER_ALPN = "discretpeer/1"

MAX_FRAME = 4096  # bytes of type + body
TOKEN_SIZE = 32
INSTANCE_SIZE = 16
RELAY_SESSION_ID_SIZE = 8
MAX_TOKENS_PER_FRAME = 64
MAX_CANDIDATES = 8
MAX_ERROR_MESSAGE = 256  # bytes of UTF-8


class ErrorCode(enum.IntEnum):
    """Error codes carried in :class:`Error` and :class:`RelayEnd` frames."""

    MALFORMED = 1
    FRAME_TOO_LARGE = 2
    UNSUPPORTED_VERSION = 3
    UNEXPECTED_MESSAGE = 4
    TOO_MANY_TOKENS = 5
    TOO_MANY_CONNECTIONS = 6
    RATE_LIMITED = 7
    SLOW_READER = 8
    SHUTTING_DOWN = 9
    IDLE_TIMEOUT = 10
    # a token of the Announce got no slot (non-fatal), or the connection's slot was given to a
    # newer one; the message starts with the token in hex (TOKEN_FULL_PREFIX) so that a peer
    # knows which meeting. Older peers show it as an unknown non-fatal code.
    TOKEN_FULL = 11
    RELAY_REFUSED = 20
    RELAY_TOO_MANY_SESSIONS = 21
    RELAY_BYTES_EXCEEDED = 22
    RELAY_DURATION_EXCEEDED = 23
    RELAY_PEER_GONE = 24
    RELAY_NOT_INTRODUCED = 25  # no introduction between the requester and that instance on that token
    INTERNAL = 99


def token_full_message(token: bytes, text: str) -> str:
    """The message of a TOKEN_FULL error: ``<token hex>: <text>`` (within MAX_ERROR_MESSAGE)."""
    return f"{token.hex()}: {text}"[:MAX_ERROR_MESSAGE]


def token_of_full_message(message: str) -> bytes | None:
    """The token a TOKEN_FULL error's message names, or None if it names none."""
    head = message[: 2 * TOKEN_SIZE]
    if len(head) != 2 * TOKEN_SIZE or message[2 * TOKEN_SIZE : 2 * TOKEN_SIZE + 1] != ":":
        return None
    try:
        token = bytes.fromhex(head)
    except ValueError:
        return None
    return token if token.hex() == head else None  # canonical: 64 lower-case hex digits


class WireError(Exception):
    """Bytes that do not form a valid frame. ``code`` says why (for the Error frame)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MessageType(enum.IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    ANNOUNCE = 0x03
    INTRODUCTION = 0x04
    ERROR = 0x05
    PING = 0x06
    PONG = 0x07
    RELAY_REQUEST = 0x10
    RELAY_GRANT = 0x11
    RELAY_END = 0x12


@dataclass(frozen=True, order=True)
class Address:
    """An IP address and UDP port as seen on the wire (no IPv6 scope: link-local is not sent)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError as exc:
            raise WireError(ErrorCode.MALFORMED, f"invalid IP address {self.host!r}") from exc
        if not 0 < self.port < 65536:
            raise WireError(ErrorCode.MALFORMED, f"invalid port {self.port}")
        object.__setattr__(self, "host", str(ip))

    @classmethod
    def from_socket(cls, addr: tuple) -> Address:
        """From a socket address tuple; IPv4-mapped IPv6 becomes plain IPv4, scope is dropped."""
        host = str(addr[0]).split("%", 1)[0]
        ip = unmap_ip(ipaddress.ip_address(host))
        return cls(str(ip), int(addr[1]))

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)

    def to_socket(self) -> Addr:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Client → beacon, first frame. ``instance`` is a random per-process value (not an identity)
    that the beacon copies into introductions so that both peers pick the same dialer."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    version: int
    instance: bytes


@dataclass(frozen=True)
class Welcome:
    """Beacon → client. ``observed`` is the client's address as the beacon sees it."""

    TYPE: ClassVar[MessageType] = MessageType.WELCOME
    version: int
    observed: Address
    max_tokens: int
    # the beacon's second UDP port (NAT behaviour discovery): an optional trailing field of
    # version 2, sent when the beacon listens on it and the client can reach it (IPv4)
    behaviour_port: int | None = None


@dataclass(frozen=True)
class Announce:
    """Client → beacon: tokens to add and withdraw; ``candidates`` (if not None) replaces the
    local addresses the client reported before."""

    TYPE: ClassVar[MessageType] = MessageType.ANNOUNCE
    add: tuple[bytes, ...] = ()
    withdraw: tuple[bytes, ...] = ()
    candidates: tuple[Address, ...] | None = None
    # what the client learned of its NAT's mapping (MAPPING_*); only sent to a beacon whose
    # Welcome named a behaviour port (an optional trailing field)
    mapping: int | None = None


@dataclass(frozen=True)
class Introduction:
    """Beacon → client: another connection holds ``token``."""

    TYPE: ClassVar[MessageType] = MessageType.INTRODUCTION
    token: bytes
    instance: bytes
    observed: Address
    candidates: tuple[Address, ...] = ()
    mapping: int | None = None  # the introduced peer's NAT mapping, as it reported it (MAPPING_*)


@dataclass(frozen=True)
class Error:
    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: int
    message: str
    fatal: bool = False

    @property
    def error_code(self) -> ErrorCode | int:
        try:
            return ErrorCode(self.code)
        except ValueError:
            return self.code


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar[MessageType] = MessageType.PING
    nonce: int


@dataclass(frozen=True)
class Pong:
    TYPE: ClassVar[MessageType] = MessageType.PONG
    nonce: int


@dataclass(frozen=True)
class RelayRequest:
    """Client → beacon: relay me to the peer ``instance`` I was introduced to on ``token``."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_REQUEST
    token: bytes
    instance: bytes


@dataclass(frozen=True)
class RelayGrant:
    """Beacon → both clients: datagrams tagged ``session_id`` are forwarded to the other peer."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_GRANT
    token: bytes
    instance: bytes
    session_id: bytes
    max_bytes: int
    max_seconds: int
    rate_bytes_per_second: int


@dataclass(frozen=True)
class RelayEnd:
    TYPE: ClassVar[MessageType] = MessageType.RELAY_END
    session_id: bytes
    code: int
    message: str


Message = Hello | Welcome | Announce | Introduction | Error | Ping | Pong | RelayRequest | RelayGrant | RelayEnd


# --- encoding -----------------------------------------------------------------------------------


def _check_bytes(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise WireError(ErrorCode.MALFORMED, f"{what} must be {size} bytes")
    return bytes(value)


def _enc_address(out: bytearray, addr: Address) -> None:
    ip = addr.ip
    out.append(4 if ip.version == 4 else 6)
    out += ip.packed
    out += struct.pack("!H", addr.port)


def _enc_str(out: bytearray, text: str, limit: int) -> None:
    raw = text.encode("utf-8", "replace")[:limit]
    # never cut a multi-byte character in half
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    out += struct.pack("!H", len(raw)) + raw


def _enc_tokens(out: bytearray, tokens: tuple[bytes, ...], what: str) -> None:
    if len(tokens) > MAX_TOKENS_PER_FRAME:
        raise WireError(ErrorCode.TOO_MANY_TOKENS, f"{len(tokens)} {what} tokens in one frame")
    out.append(len(tokens))
    for token in tokens:
        out += _check_bytes(token, TOKEN_SIZE, "token")


def _enc_candidates(out: bytearray, candidates: tuple[Address, ...]) -> None:
    if len(candidates) > MAX_CANDIDATES:
        raise WireError(ErrorCode.MALFORMED, f"{len(candidates)} candidates (max {MAX_CANDIDATES})")
    out.append(len(candidates))
    for addr in candidates:
        _enc_address(out, addr)


MAPPING_UNKNOWN = 0
MAPPING_INDEPENDENT = 1  # the same public address towards every destination (cone NATs, no NAT)
MAPPING_DEPENDENT = 2  # a new public port per destination ("symmetric" NAT)


def _check_mapping(value: int) -> int:
    if value not in (MAPPING_UNKNOWN, MAPPING_INDEPENDENT, MAPPING_DEPENDENT):
        raise WireError(ErrorCode.MALFORMED, f"invalid mapping value {value}")
    return value


def encode(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """Encode one message as a complete frame (length prefix included), for a connection that
    speaks ``version``: below :data:`BEHAVIOUR_VERSION` the optional trailing fields are left out
    (a version-1 decoder refuses trailing bytes)."""
    extended = version >= BEHAVIOUR_VERSION
    body = bytearray([message.TYPE])
    if isinstance(message, Hello):
        body += struct.pack("!H", message.version)
        body += _check_bytes(message.instance, INSTANCE_SIZE, "instance")
    elif isinstance(message, Welcome):
        body += struct.pack("!H", message.version)
        _enc_address(body, message.observed)
        body += struct.pack("!H", message.max_tokens)
        if message.behaviour_port is not None and extended:
            body += struct.pack("!H", message.behaviour_port)
    elif isinstance(message, Announce):
        _enc_tokens(body, message.add, "added")
        _enc_tokens(body, message.withdraw, "withdrawn")
        if message.candidates is None:
            body.append(0)
        else:
            body.append(1)
            _enc_candidates(body, message.candidates)
        if message.mapping is not None and extended:
            body.append(_check_mapping(message.mapping))
    elif isinstance(message, Introduction):
        body += _check_bytes(message.token, TOKEN_SIZE, "token")
        body += _check_bytes(message.instance, INSTANCE_SIZE, "instance")
        _enc_address(body, message.observed)
        _enc_candidates(body, message.candidates)
        if message.mapping is not None and extended:
            body.append(_check_mapping(message.mapping))
    elif isinstance(message, Error):
        body += struct.pack("!HB", message.code, 1 if message.fatal else 0)
        _enc_str(body, message.message, MAX_ERROR_MESSAGE)
    elif isinstance(message, (Ping, Pong)):
        body += struct.pack("!Q", message.nonce)
    elif isinstance(message, RelayRequest):
        body += _check_bytes(message.token, TOKEN_SIZE, "token")
        body += _check_bytes(message.instance, INSTANCE_SIZE, "instance")
    elif isinstance(message, RelayGrant):
        body += _check_bytes(message.token, TOKEN_SIZE, "token")
        body += _check_bytes(message.instance, INSTANCE_SIZE, "instance")
        body += _check_bytes(message.session_id, RELAY_SESSION_ID_SIZE, "relay session id")
        body += struct.pack("!QII", message.max_bytes, message.max_seconds, message.rate_bytes_per_second)
    elif isinstance(message, RelayEnd):
        body += _check_bytes(message.session_id, RELAY_SESSION_ID_SIZE, "relay session id")
        body += struct.pack("!H", message.code)
        _enc_str(body, message.message, MAX_ERROR_MESSAGE)
    else:  # pragma: no cover - typing prevents it
        raise TypeError(f"cannot encode {message!r}")
    if len(body) > MAX_FRAME:
        raise WireError(ErrorCode.FRAME_TOO_LARGE, f"frame of {len(body)} bytes (max {MAX_FRAME})")
    return struct.pack("!H", len(body)) + bytes(body)


# --- decoding -----------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError(ErrorCode.MALFORMED, f"truncated {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.take(8, what), "big")

    def address(self) -> Address:
        family = self.u8("address family")
        if family == 4:
            raw = self.take(4, "IPv4 address")
        elif family == 6:
            raw = self.take(16, "IPv6 address")
        else:
            raise WireError(ErrorCode.MALFORMED, f"unknown address family {family}")
        port = self.u16("port")
        return Address(str(ipaddress.ip_address(raw)), port)

    def tokens(self, what: str) -> tuple[bytes, ...]:
        count = self.u8(f"{what} token count")
        if count > MAX_TOKENS_PER_FRAME:
            raise WireError(ErrorCode.TOO_MANY_TOKENS, f"{count} {what} tokens in one frame")
        return tuple(self.take(TOKEN_SIZE, "token") for _ in range(count))

    def candidates(self) -> tuple[Address, ...]:
        count = self.u8("candidate count")
        if count > MAX_CANDIDATES:
            raise WireError(ErrorCode.MALFORMED, f"{count} candidates (max {MAX_CANDIDATES})")
        return tuple(self.address() for _ in range(count))

    def string(self, limit: int, what: str) -> str:
        length = self.u16(f"{what} length")
        if length > limit:
            raise WireError(ErrorCode.MALFORMED, f"{what} of {length} bytes (max {limit})")
        try:
            return self.take(length, what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(ErrorCode.MALFORMED, f"{what} is not UTF-8") from exc

    def end(self, kind: MessageType) -> None:
        if self.pos != len(self.data):
            raise WireError(ErrorCode.MALFORMED, f"{len(self.data) - self.pos} trailing bytes in {kind.name}")


def decode_body(body: bytes) -> Message:
    """Decode one frame body (type byte + fields, without the length prefix)."""
    if not body:
        raise WireError(ErrorCode.MALFORMED, "empty frame")
    if len(body) > MAX_FRAME:
        raise WireError(ErrorCode.FRAME_TOO_LARGE, f"frame of {len(body)} bytes (max {MAX_FRAME})")
    try:
        kind = MessageType(body[0])
    except ValueError as exc:
        raise WireError(ErrorCode.MALFORMED, f"unknown message type 0x{body[0]:02x}") from exc
    r = _Reader(body)
    r.pos = 1
    message: Message
    if kind is MessageType.HELLO:
        message = Hello(version=r.u16("version"), instance=r.take(INSTANCE_SIZE, "instance"))
    elif kind is MessageType.WELCOME:
        message = Welcome(version=r.u16("version"), observed=r.address(), max_tokens=r.u16("max tokens"))
        if r.pos < len(r.data):
            message = dataclasses.replace(message, behaviour_port=r.u16("behaviour port"))
    elif kind is MessageType.ANNOUNCE:
        add = r.tokens("added")
        withdraw = r.tokens("withdrawn")
        flag = r.u8("candidates flag")
        if flag not in (0, 1):
            raise WireError(ErrorCode.MALFORMED, f"invalid candidates flag {flag}")
        message = Announce(add=add, withdraw=withdraw, candidates=r.candidates() if flag else None)
        if r.pos < len(r.data):
            message = dataclasses.replace(message, mapping=_check_mapping(r.u8("mapping")))
    elif kind is MessageType.INTRODUCTION:
        message = Introduction(
            token=r.take(TOKEN_SIZE, "token"),
            instance=r.take(INSTANCE_SIZE, "instance"),
            observed=r.address(),
            candidates=r.candidates(),
        )
        if r.pos < len(r.data):
            message = dataclasses.replace(message, mapping=_check_mapping(r.u8("mapping")))
    elif kind is MessageType.ERROR:
        code = r.u16("error code")
        fatal = r.u8("fatal flag")
        if fatal not in (0, 1):
            raise WireError(ErrorCode.MALFORMED, f"invalid fatal flag {fatal}")
        message = Error(code=code, fatal=bool(fatal), message=r.string(MAX_ERROR_MESSAGE, "error message"))
    elif kind is MessageType.PING:
        message = Ping(nonce=r.u64("nonce"))
    elif kind is MessageType.PONG:
        message = Pong(nonce=r.u64("nonce"))
    elif kind is MessageType.RELAY_REQUEST:
        message = RelayRequest(token=r.take(TOKEN_SIZE, "token"), instance=r.take(INSTANCE_SIZE, "instance"))
    elif kind is MessageType.RELAY_GRANT:
        message = RelayGrant(
            token=r.take(TOKEN_SIZE, "token"),
            instance=r.take(INSTANCE_SIZE, "instance"),
            session_id=r.take(RELAY_SESSION_ID_SIZE, "relay session id"),
            max_bytes=r.u64("max bytes"),
            max_seconds=r.u32("max seconds"),
            rate_bytes_per_second=r.u32("rate"),
        )
    else:  # RELAY_END
        message = RelayEnd(
            session_id=r.take(RELAY_SESSION_ID_SIZE, "relay session id"),
            code=r.u16("error code"),
            message=r.string(MAX_ERROR_MESSAGE, "error message"),
        )
    r.end(kind)
    return message


@dataclass
class FrameDecoder:
    """Incremental decoder for a byte stream of frames. Buffers at most one frame.

    ``feed`` returns every complete message; it raises :class:`WireError` on the first invalid
    frame, after which the stream is unusable (the caller sends an Error and closes).
    """

    max_frame: int = MAX_FRAME
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if length == 0:
                raise WireError(ErrorCode.MALFORMED, "empty frame")
            if length > self.max_frame:
                raise WireError(ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes (max {self.max_frame})")
            if len(self._buffer) < 2 + length:
                break
            body = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]
            messages.append(decode_body(body))
        return messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)
