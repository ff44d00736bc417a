"""QUIC stateless resets (RFC 9000 §10.3), sans-I/O.

A beacon derives the reset token of every connection ID it issues from a static key
(:func:`reset_key`, from its certificate's private key) and the connection ID
(:func:`reset_token`). A beacon restarted from the same ``cert_der.bin`` — or another process
sharing the file — can therefore answer a packet for a connection it no longer knows with a
valid stateless reset (:func:`encode_reset`), and the client closes that connection at once
(:func:`is_reset`) instead of waiting for its idle timeout.

Every beacon sharing the key can reset every connection of the others (that is the point: a
restart, or a cluster behind one address). An on-path attacker who saw a connection ID can make
such a beacon reveal its token by sending it that ID; it gains nothing it could not do by
dropping the packets (RFC 9000 §10.3.2, §21.11).

Layout of a stateless reset (it must look like a short-header packet)::

    u8   0b01xxxxxx    header form 0, fixed bit 1, the rest unpredictable
    NB   unpredictable bytes (N >= 4)
    16B  stateless reset token
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_SIZE = 16
KEY_SIZE = 32
RESET_KEY_LABEL = b"discretpeer beacon stateless reset v1"
MIN_RESET_SIZE = 21  # RFC 9000 §10.3: 5 bytes that look like a short header + the token
MAX_RESET_SIZE = 43  # §10.3: looks like a small 1-RTT packet; bounds any reset ping-pong
MIN_TRIGGER_SIZE = MIN_RESET_SIZE + 1  # a reset must be smaller than the packet that caused it
_SHORT_HEADER_MASK = 0xC0
_SHORT_HEADER = 0x40  # long-header bit clear, fixed bit set


def reset_key(secret: bytes) -> bytes:
    """The static reset key: HKDF-SHA256 of ``secret`` (the beacon's raw private key) with a
    fixed label, so the key that signs handshakes is never used as an HMAC key itself."""
    if not secret:
        raise ValueError("stateless reset secret is empty")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=RESET_KEY_LABEL).derive(secret)


def reset_token(key: bytes, cid: bytes) -> bytes:
    """The 16-byte stateless reset token of connection ID ``cid`` under ``key``."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:TOKEN_SIZE]


def token_function(key: bytes) -> Callable[[bytes], bytes]:
    """``cid -> token`` bound to ``key``."""
    return lambda cid: reset_token(key, cid)


def reset_size(trigger_size: int) -> int | None:
    """Size of the reset answering a ``trigger_size``-byte packet, or None when none may be sent:
    strictly smaller than the trigger (§10.3.3: no amplification, and any loop between two
    endpoints that both answer with resets shrinks to nothing), at least :data:`MIN_RESET_SIZE`."""
    size = min(trigger_size - 1, MAX_RESET_SIZE)
    return size if size >= MIN_RESET_SIZE else None


def should_answer(datagram: bytes) -> bool:
    """True if ``datagram`` may be answered with a stateless reset: a short-header packet (a
    long-header one belongs to a handshake) big enough for a smaller reset to exist."""
    return len(datagram) >= MIN_TRIGGER_SIZE and datagram[0] & _SHORT_HEADER_MASK == _SHORT_HEADER


def encode_reset(token: bytes, size: int, random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A stateless reset of ``size`` bytes ending with ``token``."""
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"stateless reset token must be {TOKEN_SIZE} bytes, not {len(token)}")
    if not MIN_RESET_SIZE <= size <= MAX_RESET_SIZE:
        raise ValueError(f"stateless reset size {size} outside {MIN_RESET_SIZE}..{MAX_RESET_SIZE}")
    unpredictable = random_bytes(size - TOKEN_SIZE)
    first = _SHORT_HEADER | (unpredictable[0] & 0x3F)
    return bytes([first]) + unpredictable[1:] + token


def is_reset(datagram: bytes, tokens: Iterable[bytes]) -> bool:
    """True if ``datagram`` is a stateless reset carrying one of ``tokens`` (RFC 9000 §10.3.1:
    its last 16 bytes; compared in constant time)."""
    if len(datagram) < MIN_RESET_SIZE or datagram[0] & _SHORT_HEADER_MASK != _SHORT_HEADER:
        return False
    tail = datagram[-TOKEN_SIZE:]
    found = False
    for token in tokens:
        if token and len(token) == TOKEN_SIZE and hmac.compare_digest(tail, token):
            found = True
    return found
