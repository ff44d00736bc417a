"""A test certificate authority and a "domain" certificate it signs, as an owner's Let's Encrypt files.

Chromium trusts the CA for one test profile only: ``--ignore-certificate-errors-spki-list`` with the
CA's SPKI hash (honoured with ``--user-data-dir``, which tests/web/chromium.py always sets); the page is
then a secure context, as with a real certificate. Python clients use ``ssl.create_default_context(
cafile=...)``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "discretpeer test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, chain_path, key_path = directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    chain_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return DomainCertificate(
        ca=ca_path,
        fullchain=chain_path,
        private_key=key_path,
        ca_spki=base64.b64encode(hashlib.sha256(spki).digest()).decode(),
        leaf_der=leaf.public_bytes(serialization.Encoding.DER),
    )
