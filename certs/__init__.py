"""Certificate tooling shared by the beacon and the peers.

A beacon is pinned by the SHA-256 of its certificate DER, written base64url without padding
(43 characters). ``cert_der.bin`` holds the certificate and its private key (see :mod:`certs.bundle`).
"""

from certs.bundle import (
    CertificateBundle,
    CertificateFileError,
    create_bundle,
    load_bundle,
    load_or_create_bundle,
    save_bundle,
)
from certs.fingerprint import (
    FINGERPRINT_LENGTH,
    InvalidFingerprint,
    certificate_fingerprint,
    parse_fingerprint,
)

__all__ = [
    "FINGERPRINT_LENGTH",
    "CertificateBundle",
    "CertificateFileError",
    "InvalidFingerprint",
    "certificate_fingerprint",
    "create_bundle",
    "load_bundle",
    "load_or_create_bundle",
    "parse_fingerprint",
    "save_bundle",
]
