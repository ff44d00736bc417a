"""``cert_der.bin``: a self-signed certificate and its private key in one file.

File layout (all integers big-endian)::

    magic   8 bytes  b"DPCERT\\x00\\x01"   (format version 1)
    u32     length of the certificate DER, then the DER
    u32     length of the private key (PKCS#8 DER, unencrypted), then the key

Keys are Ed25519: small, fast, and accepted by aioquic on both sides of a handshake.
The file is written with mode 0600 atomically (temporary file + rename), so a crash
never leaves a half-written bundle behind.
"""

from __future__ import annotations

import datetime
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from certs.fingerprint import certificate_fingerprint
from certs.smallfile import SmallFileError, read_small_file

MAGIC = b"DPCERT\x00\x01"
MAX_PART = 64 * 1024
# A real bundle is ~340 bytes; anything this large is not one (and /dev/zero is not read at all).
MAX_BUNDLE_FILE = 64 * 1024


class CertificateFileError(Exception):
    """The certificate bundle file is missing parts, corrupt or unreadable."""


@dataclass(frozen=True)
class CertificateBundle:
    certificate: x509.Certificate
    private_key: ed25519.Ed25519PrivateKey

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        """The string a client pins: base64url(SHA-256(certificate DER))."""
        return certificate_fingerprint(self.certificate_der)

    def to_bytes(self) -> bytes:
        cert = self.certificate_der
        key = self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return MAGIC + struct.pack("!I", len(cert)) + cert + struct.pack("!I", len(key)) + key

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "certificate bundle") -> CertificateBundle:
        if not data.startswith(MAGIC):
            raise CertificateFileError(f"{source}: not a discretpeer certificate bundle (bad magic)")
        offset = len(MAGIC)
        parts: list[bytes] = []
        for what in ("certificate", "private key"):
            if len(data) < offset + 4:
                raise CertificateFileError(f"{source}: truncated before the {what}")
            (length,) = struct.unpack_from("!I", data, offset)
            offset += 4
            if length == 0 or length > MAX_PART or len(data) < offset + length:
                raise CertificateFileError(f"{source}: truncated or invalid {what} length {length}")
            parts.append(data[offset : offset + length])
            offset += length
        if offset != len(data):
            raise CertificateFileError(f"{source}: {len(data) - offset} unexpected trailing bytes")
        try:
            certificate = x509.load_der_x509_certificate(parts[0])
        except ValueError as exc:
            raise CertificateFileError(f"{source}: certificate is not valid DER ({exc})") from exc
        try:
            key = serialization.load_der_private_key(parts[1], password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateFileError(f"{source}: private key is not valid PKCS#8 ({exc})") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CertificateFileError(f"{source}: private key is not Ed25519")
        cert_public = certificate.public_key()
        if not isinstance(cert_public, ed25519.Ed25519PublicKey) or cert_public.public_bytes_raw() != (
            key.public_key().public_bytes_raw()
        ):
            raise CertificateFileError(f"{source}: private key does not match the certificate")
        return cls(certificate=certificate, private_key=key)


def create_bundle(
    common_name: str = "discretpeer-beacon",
    *,
    private_key: ed25519.Ed25519PrivateKey | None = None,
    valid_days: int = 36500,
) -> CertificateBundle:
    """Create a self-signed Ed25519 certificate. Pinning makes the name and dates irrelevant,
    so it is valid for a century: a beacon's hash must never change because a date passed."""
    key = private_key or ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, algorithm=None)
    )
    return CertificateBundle(certificate=certificate, private_key=key)


def _write_temporary(bundle: CertificateBundle, path: Path) -> Path:
    """The bundle in a new, uniquely named 0600 file next to ``path`` (flushed to disk)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # O_EXCL, 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(bundle.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def save_bundle(bundle: CertificateBundle, path: Path) -> None:
    """Write the bundle atomically with mode 0600 (replacing ``path`` if it exists)."""
    path = Path(path)
    tmp = _write_temporary(bundle, path)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_new_bundle(bundle: CertificateBundle, path: Path) -> bool:
    """Write the bundle at ``path`` only if nothing is there, atomically (hard link: two beacons
    starting at once in one directory end up with one identity). False if ``path`` appeared."""
    tmp = _write_temporary(bundle, path)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: create exclusively in place instead
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(bundle.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    return True


def load_bundle(path: Path) -> CertificateBundle:
    """Read a bundle: a regular file (or a symlink to one) of at most :data:`MAX_BUNDLE_FILE` bytes."""
    path = Path(path)
    try:
        data = read_small_file(path, MAX_BUNDLE_FILE)
    except SmallFileError as exc:
        raise CertificateFileError(str(exc)) from exc
    except OSError as exc:
        raise CertificateFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return CertificateBundle.from_bytes(data, source=str(path))


def load_or_create_bundle(path: Path, common_name: str = "discretpeer-beacon") -> tuple[CertificateBundle, bool]:
    """Load ``path`` if it exists (never overwriting a corrupt file), else create it.
    Returns the bundle and whether it was created.

    Anything at ``path``, even a dangling symlink, counts as existing: a new identity would
    silently break every client's pin, so a missing link target is an error, not a first run."""
    path = Path(path)
    if os.path.lexists(path):
        try:
            return load_bundle(path), False
        except CertificateFileError as exc:
            if path.is_symlink() and not path.exists():
                raise CertificateFileError(f"{exc} (not creating a new identity: clients pin this one)") from exc
            raise
    bundle = create_bundle(common_name)
    if not _save_new_bundle(bundle, path):  # another process created it meanwhile: use that one
        return load_bundle(path), False
    return bundle, True
