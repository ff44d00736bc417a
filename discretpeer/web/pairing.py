"""Pairing a browser with a device by a short code (sans-I/O): SPAKE2, then identities under its key.

The code looks like ``K7Q2-9XMT4H`` (10 symbols of Crockford base32, 50 bits). The first four symbols
only say *where* to meet: the beacon room is ``derive_token("discretpeer/web pairing/" + room)``, so
the beacon learns 20 bits it cannot use. The last six (30 bits) are the SPAKE2 password (Ed25519
group, SHA-256: the ``spake2`` package's defaults, re-implemented for the page in
``beacon/web_static/spake2.js``). Whoever sits in the middle - the beacon included - gets one online
guess; the device burns the code at the first attempt, right or wrong.

Messages (the ``data`` of signalling ``send``s on the pairing token)::

    browser -> device  {"k":"pake","m":b64(SPAKE2 A message)}
    device  -> browser {"k":"pake","m":b64(SPAKE2 B message),"mac":b64(HMAC(K,"device"|pd))}
    browser -> device  {"k":"hello","pub":b64(browser Ed25519 key),"name":str,"mac":b64(HMAC(K,"browser"|pd|pb))}
    device  -> browser {"k":"welcome","pub":b64(device key),"name":str} | {"k":"refused","reason":str}

where ``pd`` is the device's public key, sent in the first device message too (``"pub"``), and the
meeting secret both keep is HKDF(K, "discretpeer/web meeting v1").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_B

from discretpeer.tokens import derive_token

__all__ = [
    "ALPHABET",
    "PairingError",
    "DevicePairing",
    "generate_code",
    "parse_code",
    "pairing_token",
    "meeting_secret",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
ROOM_SYMBOLS = 4
SECRET_SYMBOLS = 6
ID_BROWSER = b"discretpeer/web browser"
ID_DEVICE = b"discretpeer/web device"
MAX_NAME = 64


class PairingError(ValueError):
    """A pairing that failed; ``str(exc)`` says why (and is safe to show the other side)."""


def generate_code() -> str:
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(ROOM_SYMBOLS + SECRET_SYMBOLS))
    return f"{symbols[:ROOM_SYMBOLS]}-{symbols[ROOM_SYMBOLS:]}"


def parse_code(text: str) -> tuple[str, str]:
    """(room, password) of a typed code; forgiving about case, spaces, dashes, and O/I/L look-alikes."""
    cleaned = text.upper().replace("-", "").replace(" ", "").replace("O", "0").replace("I", "1").replace("L", "1")
    if len(cleaned) != ROOM_SYMBOLS + SECRET_SYMBOLS or any(c not in ALPHABET for c in cleaned):
        raise PairingError(f"a pairing code is {ROOM_SYMBOLS}+{SECRET_SYMBOLS} symbols like K7Q2-9XMT4H")
    return cleaned[:ROOM_SYMBOLS], cleaned[ROOM_SYMBOLS:]


def pairing_token(room: str) -> str:
    return derive_token("discretpeer/web pairing/" + room).hex()


def meeting_secret(key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"discretpeer/v1", info=b"discretpeer/web meeting v1"
    ).derive(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str, max_len: int = 256) -> bytes:
    if not isinstance(value, str) or len(value) > max_len:
        raise PairingError(f"{what} is missing or too long")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise PairingError(f"{what} is not base64") from None


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\0".join(parts), hashlib.sha256).digest()


@dataclass
class PairedBrowser:
    public_key: bytes
    name: str
    meeting: bytes
    listed: bool = False  # its peer id was put in the config's [peers] and allow (old files: not yet)


class DevicePairing:
    """The device's side of one pairing code: feed browser messages, send what it returns.

    One attempt per code: after the first SPAKE2 message, any failure ends it (``done`` is set)."""

    def __init__(self, code: str, device_public_key: bytes, device_name: str) -> None:
        _, self.password = parse_code(code)
        self.device_public_key = device_public_key
        self.device_name = device_name[:MAX_NAME]
        self.key: bytes | None = None
        self.done = False
        self.result: PairedBrowser | None = None

    def receive(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, PairedBrowser | None]:
        """(reply to send or None, the paired browser once pairing succeeded). Raises PairingError."""
        if self.done:
            raise PairingError("this code was already used")
        kind = data.get("k")
        try:
            if kind == "pake" and self.key is None:
                message = _unb64(data.get("m"), "SPAKE2 message", 128)
                spake = SPAKE2_B(self.password.encode(), idA=ID_BROWSER, idB=ID_DEVICE)
                mine = spake.start()
                try:
                    self.key = spake.finish(message)
                except Exception as exc:  # noqa: BLE001 - spake2 raises ValueError/SPAKEError/AssertionError
                    raise PairingError(f"bad SPAKE2 message ({type(exc).__name__})") from None
                mac = _mac(self.key, b"device", self.device_public_key)
                return {"k": "pake", "m": _b64(mine), "pub": _b64(self.device_public_key), "mac": _b64(mac)}, None
            if kind == "hello" and self.key is not None:
                public_key = _unb64(data.get("pub"), "browser key", 64)
                if len(public_key) != 32:
                    raise PairingError("browser key must be 32 bytes (Ed25519)")
                name = data.get("name")
                if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable():
                    raise PairingError(f"browser name must be 1..{MAX_NAME} printable characters")
                mac = _unb64(data.get("mac"), "mac", 64)
                if not hmac.compare_digest(mac, _mac(self.key, b"browser", self.device_public_key, public_key)):
                    raise PairingError("wrong pairing code")
                self.done = True
                self.result = PairedBrowser(public_key, name, meeting_secret(self.key))
                return {"k": "welcome", "pub": _b64(self.device_public_key), "name": self.device_name}, self.result
            raise PairingError(f"unexpected pairing message {kind!r}")
        except PairingError:
            self.done = True  # one guess per code
            raise
