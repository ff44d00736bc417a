"""What a TLS ClientHello asks for: the server name (SNI) and the ALPN protocols (sans-I/O).

The beacon's TLS/TCP listener serves two kinds of clients on one port: peers, which pin the beacon's
own self-signed certificate and offer our ALPN, and browsers, which need the owner's domain
certificate (beacon/web.py). Python's ``ssl`` picks a certificate by server name only
(``sni_callback``) and never shows the callback the ALPN list, so a peer that sent the domain's name
would be handed the domain certificate and fail its pin. The listener already looks at the first
bytes before any TLS state (tcp_service.py), so it reads the first record itself with
:func:`parse_client_hello` and chooses the whole TLS context before OpenSSL sees a byte: our ALPN
offered → the beacon's certificate, whatever the name; a name of the domain certificate with HTTP (or
no ALPN) → the domain certificate.

Strict and bounded: one record of at most 16 KiB, every length checked against what contains it,
anything odd → ``None`` (the listener then treats the client as a peer and OpenSSL has the last word).
A ClientHello split over several records also gives ``None``: no browser does that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ClientHello", "first_record_size", "name_matches", "normalize_name", "parse_client_hello"]

RECORD_HEADER = 5
MAX_RECORD = 16384  # TLSPlaintext.length <= 2^14
_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOST_NAME = 0
MAX_NAME = 253


@dataclass(frozen=True)
class ClientHello:
    server_name: str | None  # lower case, no trailing dot; None when not sent
    alpn: tuple[str, ...]  # in the client's order; () when not sent


class _Malformed(Exception):
    pass


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _Malformed
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sub(self, length_size: int) -> _Reader:
        """The next vector (its length prefixed on ``length_size`` bytes) as a reader of its own."""
        n = self.number(length_size)
        start = self.pos
        self.take(n)
        return _Reader(self.data, start, start + n)

    @property
    def done(self) -> bool:
        return self.pos == self.end


def first_record_size(data: bytes | bytearray) -> int | None:
    """Bytes of the first TLS record, header included, once its header is in ``data`` (else None)."""
    if len(data) < RECORD_HEADER:
        return None
    return RECORD_HEADER + int.from_bytes(data[3:5], "big")


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello in the first record of ``data``, or None (not one, malformed, or fragmented)."""
    if len(data) < RECORD_HEADER or data[0] != _HANDSHAKE:
        return None
    length = int.from_bytes(data[3:5], "big")
    if length > MAX_RECORD or len(data) < RECORD_HEADER + length:
        return None
    try:
        return _client_hello(_Reader(bytes(data[: RECORD_HEADER + length]), RECORD_HEADER))
    except _Malformed:
        return None


def _client_hello(record: _Reader) -> ClientHello:
    if record.number(1) != _CLIENT_HELLO:
        raise _Malformed
    if record.number(3) != record.end - record.pos:  # exactly one whole ClientHello in this record
        raise _Malformed
    record.take(2 + 32)  # legacy_version, random
    session = record.sub(1)
    if session.end - session.pos > 32:
        raise _Malformed
    suites = record.sub(2)
    if suites.done or (suites.end - suites.pos) % 2:
        raise _Malformed
    if record.sub(1).done:  # compression methods: at least "null"
        raise _Malformed
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if record.done:  # no extensions at all (TLS 1.2 allows it)
        return ClientHello(None, ())
    extensions = record.sub(2)
    if not record.done:
        raise _Malformed
    seen: set[int] = set()
    while not extensions.done:
        kind = extensions.number(2)
        body = extensions.sub(2)
        if kind in seen:  # RFC 8446 §4.2: at most one of each
            raise _Malformed
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(body)
        elif kind == _EXT_ALPN:
            alpn = _alpn(body)
    return ClientHello(server_name, alpn)


def _server_name(body: _Reader) -> str:
    names = body.sub(2)
    if not body.done or names.done:
        raise _Malformed
    host: str | None = None
    while not names.done:
        kind = names.number(1)
        raw = names.sub(2)
        value = raw.take(raw.end - raw.pos)
        if kind != _HOST_NAME:
            continue
        if host is not None:  # RFC 6066 §3: one name per type
            raise _Malformed
        host = normalize_name(value)
        if host is None:
            raise _Malformed
    if host is None:
        raise _Malformed
    return host


def _alpn(body: _Reader) -> tuple[str, ...]:
    protocols = body.sub(2)
    if not body.done or protocols.done:
        raise _Malformed
    found = []
    while not protocols.done:
        raw = protocols.sub(1)
        if raw.done:  # empty protocol names are not allowed
            raise _Malformed
        found.append(raw.take(raw.end - raw.pos).decode("latin-1"))
    return tuple(found)


def normalize_name(value: bytes | str) -> str | None:
    """A DNS name as compared here: ASCII, lower case, no trailing dot; None if it is not one."""
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value.encode("ascii").decode("ascii")
    except UnicodeError:
        return None
    text = text.lower().removesuffix(".")
    if not text or len(text) > MAX_NAME or any(c <= " " or c == "\x7f" for c in text):
        return None
    return text


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """``name`` (normalized) is one of ``patterns`` (normalized certificate names), where
    ``*.example.org`` stands for exactly one label, as browsers match a certificate."""
    head, _, parent = name.partition(".")
    for pattern in patterns:
        if pattern == name:
            return True
        if pattern.startswith("*.") and head and parent and pattern[2:] == parent:
            return True
    return False
