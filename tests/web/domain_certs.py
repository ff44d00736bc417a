"""The owner's domain certificate (as Let's Encrypt's files) signed by a test CA.

Chromium trusts the CA for one test profile only: ``--ignore-certificate-errors-spki-list`` with the
CA's SPKI hash (honoured with ``--user-data-dir``, which tests/web/chromium.py always sets); the page is
then a secure context, as with a real certificate. Python clients use ``ssl.create_default_context(
cafile=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.certificates import make_tls_files


@dataclass(frozen=True)
class DomainCertificate:
    ca: Path  # the CA certificate (PEM): what clients trust
    fullchain: Path  # leaf + CA, as Let's Encrypt's fullchain.pem
    private_key: Path
    ca_spki: str  # base64(SHA-256(CA SubjectPublicKeyInfo)): Chromium's allow-list entry
    leaf_der: bytes

    def chromium_flags(self) -> list[str]:
        return [f"--ignore-certificate-errors-spki-list={self.ca_spki}"]


def make_domain_certificate(directory: Path, names: tuple[str, ...] = ("localhost",)) -> DomainCertificate:
    files = make_tls_files(directory, names)
    return DomainCertificate(files.ca, files.fullchain, files.key, files.ca_spki, files.leaf_der)
