"""Identity proofs bound to one QUIC connection (sans-I/O).

After the TLS handshake each side signs, with its Ed25519 identity key::

    "discretpeer/v1 identity proof\\0" | role | exporter | token

``exporter`` is a TLS 1.3 Derive-Secret over the whole handshake transcript under our own label
(see :func:`connection_exporter`): both ends compute the same 32 bytes, nobody else can, and it
differs for every connection, so a proof cannot be replayed on another connection or relayed by a
man in the middle (whose two handshakes have two transcripts). ``role`` ("D" dialer, "L" listener)
stops a proof from being reflected back. Nothing the other side chose alone is ever signed.

The proof travels on the dialer's first bidirectional stream (id 0) as one frame::

    u16 length | u8 version | u8 kind | body
    kind 1 PROOF:   32B token | 32B public key | 64B signature
    kind 2 REFUSE:  u8 reason | u16 length | UTF-8 text
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aioquic.quic.connection import QuicConnection

from discretpeer.identity import Identity, IdentityError, encode_peer_id, normalize_peer_id, verify_signature
from discretpeer.proto.wire import TOKEN_SIZE
from discretpeer.quic_stack import handshake_complete
from discretpeer.tasks import wait_for

AUTH_VERSION = 1
PROOF_LABEL = b"discretpeer/v1 identity proof\x00"
EXPORTER_LABEL = b"discretpeer exporter"
MAX_AUTH_FRAME = 512
MAX_REFUSAL_TEXT = 200


class Role(bytes, enum.Enum):
    DIALER = b"D"
    LISTENER = b"L"


class RefusalReason(enum.IntEnum):
    UNEXPECTED_PEER = 1
    BAD_PROOF = 2
    UNKNOWN_MEETING = 3
    MALFORMED = 4
    DUPLICATE = 5


class AuthError(Exception):
    """A proof that is malformed, fails verification, or names an unexpected peer."""


@dataclass(frozen=True)
class Proof:
    token: bytes
    public_key: bytes
    signature: bytes

    @property
    def peer_id(self) -> str:
        return encode_peer_id(self.public_key)


@dataclass(frozen=True)
class Refusal:
    reason: int
    text: str


AuthMessage = Proof | Refusal


def connection_exporter(quic: QuicConnection) -> bytes:
    """32 secret bytes unique to this connection, equal on both ends once the handshake is done."""
    schedule = quic.tls.key_schedule
    if schedule is None or not handshake_complete(quic):
        raise AuthError("TLS handshake not complete")
    return schedule.derive_secret(EXPORTER_LABEL)


def signed_message(role: Role, exporter: bytes, token: bytes) -> bytes:
    return PROOF_LABEL + role.value + exporter + token


def build_proof(identity: Identity, role: Role, exporter: bytes, token: bytes) -> bytes:
    if len(token) != TOKEN_SIZE:
        raise ValueError("token has the wrong size")
    signature = identity.sign(signed_message(role, exporter, token))
    body = bytes([AUTH_VERSION, 1]) + token + identity.public_key + signature
    return struct.pack("!H", len(body)) + body


def build_refusal(reason: RefusalReason, text: str) -> bytes:
    raw = text.encode("utf-8", "replace")[:MAX_REFUSAL_TEXT].decode("utf-8", "ignore").encode("utf-8")
    body = bytes([AUTH_VERSION, 2, int(reason)]) + struct.pack("!H", len(raw)) + raw
    return struct.pack("!H", len(body)) + body


def parse_auth(body: bytes) -> AuthMessage:
    """Parse one auth frame body (without the u16 length prefix)."""
    if len(body) < 2:
        raise AuthError("truncated auth frame")
    if body[0] != AUTH_VERSION:
        raise AuthError(f"unsupported auth version {body[0]}")
    if body[1] == 1:
        if len(body) != 2 + TOKEN_SIZE + 32 + 64:
            raise AuthError(f"proof of {len(body)} bytes")
        token = body[2 : 2 + TOKEN_SIZE]
        public_key = body[2 + TOKEN_SIZE : 2 + TOKEN_SIZE + 32]
        return Proof(token=token, public_key=public_key, signature=body[2 + TOKEN_SIZE + 32 :])
    if body[1] == 2:
        if len(body) < 5:
            raise AuthError("truncated refusal")
        (length,) = struct.unpack_from("!H", body, 3)
        if length > MAX_REFUSAL_TEXT or len(body) != 5 + length:
            raise AuthError("refusal text has the wrong length")
        try:
            text = body[5:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AuthError("refusal text is not UTF-8") from exc
        return Refusal(reason=body[2], text=text)
    raise AuthError(f"unknown auth frame kind {body[1]}")


def verify_proof(proof: Proof, role: Role, exporter: bytes) -> str:
    """Check the signature of a proof made by ``role``; return the prover's peer id."""
    if not verify_signature(proof.public_key, proof.signature, signed_message(role, exporter, proof.token)):
        raise AuthError("identity proof signature does not verify for this connection")
    return proof.peer_id


async def read_auth_frame(reader: object, timeout: float) -> bytes:
    """Read one length-prefixed auth frame body from an asyncio StreamReader."""

    stream = reader  # typed loosely: asyncio.StreamReader
    header = await wait_for(stream.readexactly(2), timeout)  # type: ignore[attr-defined]  # a StreamReader or our adapter: both have readexactly
    (length,) = struct.unpack("!H", header)
    if not 2 <= length <= MAX_AUTH_FRAME:
        raise AuthError(f"auth frame of {length} bytes")
    return await wait_for(stream.readexactly(length), timeout)  # type: ignore[attr-defined]  # a StreamReader or our adapter: both have readexactly


# --- whom we expect -----------------------------------------------------------------------------

Expectation = str | Iterable[str] | Callable[[str], bool] | None


class PeerPolicy:
    """Decides whether a verified peer id is acceptable: one id, a set of ids, a callback,
    or ``None`` for any peer that knows the meeting identifier."""

    def __init__(self, expect: Expectation) -> None:
        self._ids: frozenset[str] | None = None
        self._callback: Callable[[str], bool] | None = None
        self.description = "any peer that knows the meeting"
        if expect is None:
            return
        if isinstance(expect, str):
            self._ids = frozenset({self._normalize(expect)})
        elif callable(expect):
            self._callback = expect
            self.description = f"peers accepted by {getattr(expect, '__name__', 'a callback')}"
            return
        else:
            self._ids = frozenset(self._normalize(item) for item in expect)
            if not self._ids:
                raise ValueError("expect: an empty set of peer ids accepts nobody")
        self.description = ", ".join(sorted(self._ids)) if len(self._ids) <= 3 else f"{len(self._ids)} peer ids"

    @staticmethod
    def _normalize(peer_id: str) -> str:
        try:
            return normalize_peer_id(peer_id)
        except IdentityError as exc:
            raise ValueError(f"expect: {exc}") from exc

    @property
    def single(self) -> str | None:
        if self._ids is not None and len(self._ids) == 1:
            return next(iter(self._ids))
        return None

    def accepts(self, peer_id: str) -> bool:
        if self._ids is not None:
            return peer_id in self._ids
        if self._callback is not None:
            try:
                return bool(self._callback(peer_id))
            except Exception:  # noqa: BLE001 - a failing app callback refuses, never crashes us
                return False
        return True
