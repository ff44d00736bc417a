"""Certificate fingerprints: SHA-256 of the DER, base64url without padding."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

FINGERPRINT_LENGTH = 43
_FINGERPRINT_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


class InvalidFingerprint(ValueError):
    """A certificate hash string that is not 43 base64url characters."""


def certificate_fingerprint(certificate_der: bytes) -> str:
    """Return the pin of a certificate: base64url(SHA-256(DER)) without padding."""
    digest = hashlib.sha256(certificate_der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def parse_fingerprint(text: str) -> bytes:
    """Validate a fingerprint string and return the 32-byte digest it encodes."""
    if not isinstance(text, str) or not _FINGERPRINT_RE.match(text):
        raise InvalidFingerprint(f"certificate hash must be {FINGERPRINT_LENGTH} base64url characters, got {text!r}")
    try:
        digest = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex already guards
        raise InvalidFingerprint(f"certificate hash {text!r} is not base64url") from exc
    # 43 chars carry 258 bits; the last 2 must be zero for a canonical encoding.
    if certificate_fingerprint_from_digest(digest) != text:
        raise InvalidFingerprint(f"certificate hash {text!r} is not canonical base64url")
    return digest


def certificate_fingerprint_from_digest(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
