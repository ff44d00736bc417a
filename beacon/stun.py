"""STUN binding answers (RFC 8489) on the beacon's UDP port, sans-I/O, so browsers learn their public
address (server-reflexive ICE candidates) from the beacon they already trust.

STUN shares the port with QUIC: a STUN message's first byte has its two top bits clear and carries
the magic cookie at bytes 4-8, while every QUIC packet has the fixed bit (0x40) set. Only Binding
requests are answered; the answer (XOR-MAPPED-ADDRESS + FINGERPRINT, 40 bytes for IPv4, 52 for
IPv6) is at most 2.6x the smallest request, under QUIC's 3x anti-amplification rule, and a token
bucket bounds what the beacon sends in total.
"""

from __future__ import annotations

import ipaddress
import struct
import time
import zlib
from dataclasses import dataclass

from discretpeer.addresses import Addr, unmap_host

__all__ = ["MAGIC_COOKIE", "StunResponder", "binding_response", "is_stun", "parse_binding_request"]

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
MAX_REQUEST = 548  # a binding request from a browser is 20-100 bytes; more is not a request we answer


def is_stun(data: bytes) -> bool:
    """Looks like a STUN message (and so is not QUIC): top bits 00, magic cookie, sane length."""
    return (
        len(data) >= 20
        and data[0] < 0x40
        and int.from_bytes(data[4:8], "big") == MAGIC_COOKIE
        and int.from_bytes(data[2:4], "big") == len(data) - 20
        and len(data) % 4 == 0
    )


def parse_binding_request(data: bytes) -> bytes | None:
    """The transaction id of a well-formed Binding request, else None (never raises)."""
    if not is_stun(data) or len(data) > MAX_REQUEST:
        return None
    kind, length, _, transaction = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST:
        return None
    offset = 20
    while offset < 20 + length:  # the attributes must tile the body exactly
        if offset + 4 > len(data):
            return None
        size = int.from_bytes(data[offset + 2 : offset + 4], "big")
        offset += 4 + size + (-size % 4)
    if offset != 20 + length:
        return None
    return transaction


def binding_response(transaction: bytes, host: str, port: int) -> bytes:
    """A Binding success response telling the requester its address as we saw it."""
    ip = ipaddress.ip_address(host)
    if ip.version == 4 and isinstance(ip, ipaddress.IPv4Address):
        family, raw = 1, ip.packed
        mask = MAGIC_COOKIE.to_bytes(4, "big")
    else:
        family, raw = 2, ip.packed
        mask = MAGIC_COOKIE.to_bytes(4, "big") + transaction
    xaddr = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xaddr
    body = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    # the FINGERPRINT covers the header with the length including itself (8 bytes)
    header = HEADER.pack(BINDING_SUCCESS, len(body) + 8, MAGIC_COOKIE, transaction)
    crc = (zlib.crc32(header + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return header + body + struct.pack("!HHI", FINGERPRINT, 4, crc)


@dataclass
class StunResponder:
    """Answers Binding requests, at most ``rate`` per second overall (burst ``burst``)."""

    rate: float = 2000.0
    burst: int = 500
    answered: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._stamp: float | None = None

    def answer(self, data: bytes, source: Addr, now: float | None = None) -> bytes | None:
        transaction = parse_binding_request(data)
        if transaction is None:
            self.dropped += 1
            return None
        now = time.monotonic() if now is None else now
        elapsed = max(0.0, now - (now if self._stamp is None else self._stamp))
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._stamp = now
        if self._tokens < 1:
            self.dropped += 1
            return None
        self._tokens -= 1
        self.answered += 1
        host = unmap_host(source[0].split("%", 1)[0])
        return binding_response(transaction, host, source[1])
