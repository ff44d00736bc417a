"""DNS-SD TXT record of a discretpeer LAN service (sans-I/O codec).

A peer that waits on meeting tokens publishes ``_discretpeer._udp.local.`` pointing at its one UDP
socket, with a TXT record (RFC 6763 §6: length-prefixed ``key=value`` strings) made of::

    v=1                      format version (required; other versions are rejected)
    i=<32 hex digits>        the peer's random per-process instance (wire.INSTANCE_SIZE bytes)
    t0=<43 base64url chars>  a 32-byte token, base64url without padding
    t1=...                   up to t15: at most MAX_LAN_TOKENS tokens

Keys are case-insensitive and only the first occurrence of a key counts (RFC 6763 §6.4); unknown
keys are ignored so later versions can add some. Everything else is strict: a record larger than
:data:`MAX_TXT_SIZE`, a truncated string, a key that is not printable ASCII, a missing or bad
``v``/``i``, or a ``tN`` that is not exactly one canonical token raises :class:`LanTxtError`.
16 tokens take about 800 bytes, well under one Ethernet-sized mDNS packet.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from discretpeer.proto.wire import INSTANCE_SIZE, TOKEN_SIZE

SERVICE_TYPE = "_discretpeer._udp.local."
TXT_VERSION = b"1"
MAX_LAN_TOKENS = 16
MAX_TXT_SIZE = 1300  # bytes of TXT rdata
MAX_TXT_STRINGS = 64

_HEX = re.compile(rb"[0-9a-fA-F]{%d}" % (2 * INSTANCE_SIZE))
_TOKEN_KEY = re.compile(rb"t(0|[1-9][0-9]?)")
_B64_TOKEN_LEN = (4 * TOKEN_SIZE + 2) // 3  # 43
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


class LanTxtError(ValueError):
    """A TXT record that is not a valid discretpeer record (the message says why)."""


@dataclass(frozen=True)
class LanTxt:
    """The content of a discretpeer TXT record."""

    instance: bytes
    tokens: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.instance, bytes) or len(self.instance) != INSTANCE_SIZE:
            raise LanTxtError(f"instance must be {INSTANCE_SIZE} bytes")
        if len(self.tokens) > MAX_LAN_TOKENS:
            raise LanTxtError(f"{len(self.tokens)} tokens (max {MAX_LAN_TOKENS})")
        for token in self.tokens:
            if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
                raise LanTxtError(f"tokens must be {TOKEN_SIZE} bytes")


def encode_token(token: bytes) -> bytes:
    return base64.urlsafe_b64encode(token).rstrip(b"=")


def decode_token(text: bytes) -> bytes:
    """A canonical unpadded base64url token (exactly :data:`TOKEN_SIZE` bytes) or LanTxtError."""
    if len(text) != _B64_TOKEN_LEN:
        raise LanTxtError(f"token of {len(text)} characters (expected {_B64_TOKEN_LEN})")
    if not _B64URL.fullmatch(text):
        raise LanTxtError("token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + b"=")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the alphabet was checked
        raise LanTxtError("token is not base64url") from exc
    if len(raw) != TOKEN_SIZE or encode_token(raw) != text:
        raise LanTxtError("token is not canonical base64url")
    return raw


def txt_strings(txt: LanTxt) -> list[bytes]:
    """The TXT strings in publishing order (what ``avahi-publish`` takes as arguments)."""
    strings = [b"v=" + TXT_VERSION, b"i=" + txt.instance.hex().encode()]
    strings += [b"t%d=%s" % (n, encode_token(token)) for n, token in enumerate(txt.tokens)]
    return strings


def encode_txt(txt: LanTxt) -> bytes:
    """TXT rdata: each string prefixed by its length byte."""
    out = b"".join(bytes([len(s)]) + s for s in txt_strings(txt))
    if len(out) > MAX_TXT_SIZE:  # pragma: no cover - 16 tokens cannot reach it
        raise LanTxtError(f"TXT record of {len(out)} bytes (max {MAX_TXT_SIZE})")
    return out


def split_txt(data: bytes) -> list[bytes]:
    """The strings of TXT rdata (RFC 1035 §3.3.14), size-checked first."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LanTxtError(f"TXT data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_TXT_SIZE:
        raise LanTxtError(f"TXT record of {len(data)} bytes (max {MAX_TXT_SIZE})")
    strings: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(strings) >= MAX_TXT_STRINGS:
            raise LanTxtError(f"more than {MAX_TXT_STRINGS} TXT strings")
        length = data[pos]
        end = pos + 1 + length
        if end > len(data):
            raise LanTxtError(f"truncated TXT string at byte {pos}")
        strings.append(data[pos + 1 : end])
        pos = end
    return strings


def parse_strings(strings: list[bytes]) -> LanTxt:
    """Validate TXT strings as a discretpeer record."""
    if len(strings) > MAX_TXT_STRINGS:
        raise LanTxtError(f"more than {MAX_TXT_STRINGS} TXT strings")
    attributes: dict[bytes, bytes | None] = {}
    for string in strings:
        if len(string) > 255:
            raise LanTxtError("TXT string longer than 255 bytes")
        if not string:
            continue  # an empty string carries nothing (RFC 6763 §6.1)
        key, sep, value = string.partition(b"=")
        if not key:
            continue  # no key: silently ignored (RFC 6763 §6.4)
        if any(c < 0x20 or c > 0x7E for c in key):
            raise LanTxtError(f"TXT key {key[:16]!r} is not printable ASCII")
        key = key.lower()
        if key not in attributes:  # only the first occurrence counts
            attributes[key] = value if sep else None
    if b"v" not in attributes:
        raise LanTxtError("no v= attribute: not a discretpeer record")
    version = attributes[b"v"]
    if version != TXT_VERSION:
        shown = "no value" if version is None else repr(version[:16])
        raise LanTxtError(f"unsupported TXT version ({shown})")
    instance = attributes.get(b"i")
    if instance is None or not _HEX.fullmatch(instance):
        raise LanTxtError(f"i= must be {2 * INSTANCE_SIZE} hex digits")
    indexed: dict[int, bytes] = {}
    for key, token_value in attributes.items():
        if not key.startswith(b"t") or key == b"t":
            continue
        match = _TOKEN_KEY.fullmatch(key)
        if match is None:
            if key[1:].isdigit():
                raise LanTxtError(f"bad token key {key[:16]!r} (t0..t{MAX_LAN_TOKENS - 1})")
            continue  # an unknown key that merely starts with t
        index = int(match.group(1))
        if index >= MAX_LAN_TOKENS:
            raise LanTxtError(f"token key {key.decode()} (max t{MAX_LAN_TOKENS - 1})")
        if token_value is None:
            raise LanTxtError(f"{key.decode()} has no value")
        indexed[index] = decode_token(token_value)
    tokens = tuple(dict.fromkeys(indexed[i] for i in sorted(indexed)))
    return LanTxt(instance=bytes.fromhex(instance.decode("ascii")), tokens=tokens)


def decode_txt(data: bytes) -> LanTxt:
    """Decode TXT rdata; raises :class:`LanTxtError` (never anything else) on invalid input."""
    return parse_strings(split_txt(data))
