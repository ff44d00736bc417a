"""Punch probes: small authenticated UDP datagrams that are not QUIC packets (sans-I/O).

QUIC packets always have the fixed bit (0x40) set in their first byte; every non-QUIC datagram
of ours has it clear, so one socket carries both and :func:`is_quic` tells them apart at once.

Probe layout (74 bytes)::

    u8   kind          0x01 ping, 0x02 pong
    u8   version       1
    32B  token         the meeting token the sender punches for
    16B  instance      the sender's per-process instance value
    8B   nonce         ping: random; pong: the ping's nonce, echoed
    16B  tag           HMAC-SHA256(probe key, all of the above)[:16]

The probe key comes from the meeting identifier, which the beacon never sees: neither the beacon
nor a stranger on the path can forge a probe that redirects a punch.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from discretpeer.proto.wire import INSTANCE_SIZE, TOKEN_SIZE

PROBE_VERSION = 1
NONCE_SIZE = 8
TAG_SIZE = 16
PROBE_SIZE = 2 + TOKEN_SIZE + INSTANCE_SIZE + NONCE_SIZE + TAG_SIZE
QUIC_FIXED_BIT = 0x40


class ProbeKind(enum.IntEnum):
    PING = 0x01
    PONG = 0x02


class ProbeError(ValueError):
    """Not a valid probe (wrong size, kind or version)."""


def is_quic(datagram: bytes) -> bool:
    return bool(datagram) and bool(datagram[0] & QUIC_FIXED_BIT)


@dataclass(frozen=True)
class Probe:
    kind: ProbeKind
    token: bytes
    instance: bytes
    nonce: bytes
    tag: bytes

    def signed_part(self) -> bytes:
        return bytes([self.kind, PROBE_VERSION]) + self.token + self.instance + self.nonce

    def verify(self, probe_key: bytes) -> bool:
        expected = hmac.new(probe_key, self.signed_part(), hashlib.sha256).digest()[:TAG_SIZE]
        return hmac.compare_digest(expected, self.tag)


def build_probe(kind: ProbeKind, token: bytes, instance: bytes, nonce: bytes, probe_key: bytes) -> bytes:
    if len(token) != TOKEN_SIZE or len(instance) != INSTANCE_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("probe token, instance or nonce has the wrong size")
    signed = bytes([kind, PROBE_VERSION]) + token + instance + nonce
    return signed + hmac.new(probe_key, signed, hashlib.sha256).digest()[:TAG_SIZE]


def parse_probe(datagram: bytes) -> Probe:
    """Parse (without verifying the tag: that needs the meeting's key, found by token)."""
    if len(datagram) != PROBE_SIZE:
        raise ProbeError(f"probe of {len(datagram)} bytes (expected {PROBE_SIZE})")
    try:
        kind = ProbeKind(datagram[0])
    except ValueError as exc:
        raise ProbeError(f"unknown probe kind 0x{datagram[0]:02x}") from exc
    if datagram[1] != PROBE_VERSION:
        raise ProbeError(f"unsupported probe version {datagram[1]}")
    pos = 2
    token = datagram[pos : pos + TOKEN_SIZE]
    pos += TOKEN_SIZE
    instance = datagram[pos : pos + INSTANCE_SIZE]
    pos += INSTANCE_SIZE
    nonce = datagram[pos : pos + NONCE_SIZE]
    pos += NONCE_SIZE
    return Probe(kind=kind, token=token, instance=instance, nonce=nonce, tag=datagram[pos:])
