"""Peer identities: Ed25519 key pairs, persisted with mode 0600, named by a short text peer id.

A peer id is the raw 32-byte public key in lowercase base32 without padding (52 characters):
case-insensitive, no look-alike punctuation, safe to paste into a chat or a shell.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

PEER_ID_LENGTH = 52
_PEM_HEADER = b"-----BEGIN PRIVATE KEY-----"


class IdentityError(Exception):
    """An identity file or a peer id that cannot be used (bad content, permissions, format)."""


def encode_peer_id(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise IdentityError("an Ed25519 public key has 32 bytes")
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def decode_peer_id(peer_id: str) -> bytes:
    """Return the 32-byte public key of a peer id, or raise IdentityError naming the problem."""
    if not isinstance(peer_id, str):
        raise IdentityError(f"peer id must be a string, not {type(peer_id).__name__}")
    text = peer_id.strip().upper()
    if len(text) != PEER_ID_LENGTH:
        raise IdentityError(f"peer id must have {PEER_ID_LENGTH} characters, got {len(text)}: {peer_id!r}")
    try:
        raw = base64.b32decode(text + "====")
    except (binascii.Error, ValueError) as exc:
        raise IdentityError(f"peer id is not base32: {peer_id!r}") from exc
    if encode_peer_id(raw) != text.lower():
        raise IdentityError(f"peer id is not canonical base32: {peer_id!r}")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # pragma: no cover - every 32-byte string loads today
        raise IdentityError(f"peer id is not an Ed25519 key: {peer_id!r}") from exc
    return raw


def normalize_peer_id(peer_id: str) -> str:
    return encode_peer_id(decode_peer_id(peer_id))


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair. ``peer_id`` is what others use to name and expect this peer."""

    private_key: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes_raw()

    @property
    def peer_id(self) -> str:
        return encode_peer_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as PKCS#8 PEM with mode 0600 (atomically; refuses to overwrite)."""
        path = Path(path)
        if path.exists():
            raise IdentityError(f"{path}: already exists; refusing to overwrite an identity")
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Load a key file; refuses files readable by group or others, and anything not Ed25519."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"{path}: cannot read identity ({exc.strerror or exc})") from exc
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; run: chmod 600 {path}")
        if not data.lstrip().startswith(_PEM_HEADER):
            raise IdentityError(f"{path}: not a PEM private key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"{path}: unreadable private key ({exc})") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError(f"{path}: not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        path = Path(path)
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity
