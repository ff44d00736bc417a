"""Channel binding (sans-I/O): each side signs the DTLS fingerprints of this very WebRTC session.

Both fingerprints come from the SDPs the two DTLS stacks check the certificates against, so a
signature made for one session is worthless in another (fresh certificates per connection), and a
beacon or TURN server that swapped an SDP would need a key it does not have.
"""

from __future__ import annotations

import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = ["BindingError", "binding_message", "only_sha256", "sdp_fingerprint", "verify_binding"]

LABEL = b"discretpeer/web binding v1"
_FINGERPRINT = re.compile(r"^a=fingerprint:(\S*) ?(.*?)\s*$", re.MULTILINE)
_SHA256 = re.compile(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}")


class BindingError(ValueError):
    """A binding proof that does not hold."""


def sdp_fingerprint(sdp: str) -> str:
    """The DTLS fingerprint of an SDP that must carry exactly one, SHA-256 (uppercase hex with colons).

    Exactly one of any algorithm: a DTLS stack accepts a certificate matching *any* fingerprint line
    (Chromium even keeps only the strongest one), so a binding over one line among several binds nothing."""
    found = {(algo.lower(), value.upper()) for algo, value in _FINGERPRINT.findall(sdp)}
    if len(found) != 1:
        raise BindingError(f"SDP must carry exactly one DTLS fingerprint (found {len(found)})")
    algo, value = found.pop()
    if algo != "sha-256" or not _SHA256.fullmatch(value):
        raise BindingError(f"the SDP's DTLS fingerprint must be sha-256 (got {algo!r})")
    return value


def only_sha256(sdp: str) -> str:
    """aiortc's SDP with its sha-384/sha-512 fingerprint lines removed (same certificate)."""
    drop = ("a=fingerprint:sha-384", "a=fingerprint:sha-512")
    lines = [line for line in sdp.split("\r\n") if not line.startswith(drop)]
    return "\r\n".join(lines)


def binding_message(role: str, browser_fingerprint: str, device_fingerprint: str) -> bytes:
    """What ``role`` ("browser" or "device") signs for the session with these fingerprints."""
    if role not in ("browser", "device"):
        raise ValueError(role)
    return b"\0".join([LABEL, role.encode(), browser_fingerprint.upper().encode(), device_fingerprint.upper().encode()])


def verify_binding(public_key: bytes, signature: bytes, role: str, browser_fp: str, device_fp: str) -> None:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, binding_message(role, browser_fp, device_fp)
        )
    except (InvalidSignature, ValueError):
        raise BindingError(f"the {role}'s signature over this session's fingerprints does not verify") from None
