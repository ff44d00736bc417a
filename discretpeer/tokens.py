"""Meeting identifiers → beacon tokens and probe keys (HKDF-SHA256, sans-I/O).

Peers never send a meeting identifier to anyone: the beacon and the LAN see only tokens, which are
HKDF outputs under a fixed label. With rotation on, the token changes every ``rotation_seconds``
and both peers announce the current and the previous window, so a beacon cannot link one meeting
across days while two peers whose clocks straddle a boundary still meet.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from discretpeer.proto.wire import TOKEN_SIZE

TOKEN_LABEL = b"discretpeer/v1 meeting token"
PROBE_KEY_LABEL = b"discretpeer/v1 probe key"
PAIR_MEETING_LABEL = b"discretpeer/v1 pair meeting"
SALT = b"discretpeer/v1"
DEFAULT_ROTATION_SECONDS = 24 * 3600
MAX_MEETING_BYTES = 4096


def meeting_bytes(meeting: str | bytes) -> bytes:
    """Normalise an app's meeting identifier (str is NFC-normalised UTF-8)."""
    if isinstance(meeting, str):
        raw = unicodedata.normalize("NFC", meeting).encode("utf-8")
    elif isinstance(meeting, (bytes, bytearray)):
        raw = bytes(meeting)
    else:
        raise TypeError(f"meeting identifier must be str or bytes, not {type(meeting).__name__}")
    if not raw:
        raise ValueError("meeting identifier must not be empty")
    if len(raw) > MAX_MEETING_BYTES:
        raise ValueError(f"meeting identifier longer than {MAX_MEETING_BYTES} bytes")
    return raw


def _hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=SALT, info=info).derive(ikm)


def derive_token(meeting: str | bytes, window: int | None = None) -> bytes:
    """The token for ``meeting`` in time window ``window`` (None: the non-rotating token)."""
    info = TOKEN_LABEL if window is None else TOKEN_LABEL + b"/" + window.to_bytes(8, "big")
    return _hkdf(meeting_bytes(meeting), info, TOKEN_SIZE)


def derive_probe_key(meeting: str | bytes) -> bytes:
    """Key authenticating punch probes of this meeting (unknown to the beacon)."""
    return _hkdf(meeting_bytes(meeting), PROBE_KEY_LABEL, 32)


def pair_meeting(peer_id_a: str, peer_id_b: str) -> bytes:
    """A meeting identifier both peers compute from their two peer ids, in either order.

    Anyone who knows both ids can compute it; it lets two peers that know each other meet without
    sharing a secret, while the identity check on the connection keeps impostors out."""
    first, second = sorted((peer_id_a, peer_id_b))
    return hashlib.sha256(PAIR_MEETING_LABEL + b"\0" + first.encode() + b"\0" + second.encode()).digest()


@dataclass(frozen=True)
class MeetingKeys:
    """Everything a peer derives from one meeting identifier."""

    meeting: bytes
    rotation_seconds: int | None = DEFAULT_ROTATION_SECONDS

    @classmethod
    def derive(cls, meeting: str | bytes, rotation_seconds: int | None = DEFAULT_ROTATION_SECONDS) -> MeetingKeys:
        if rotation_seconds is not None and rotation_seconds < 60:
            raise ValueError("rotation_seconds must be at least 60 (or None for no rotation)")
        return cls(meeting=meeting_bytes(meeting), rotation_seconds=rotation_seconds)

    @property
    def probe_key(self) -> bytes:
        return derive_probe_key(self.meeting)

    def window(self, now: float | None = None) -> int | None:
        if self.rotation_seconds is None:
            return None
        return int((time.time() if now is None else now) // self.rotation_seconds)

    def tokens(self, now: float | None = None) -> tuple[bytes, ...]:
        """Tokens to announce now: the current window's and the previous one's."""
        window = self.window(now)
        if window is None:
            return (derive_token(self.meeting),)
        return (derive_token(self.meeting, window), derive_token(self.meeting, window - 1))

    def seconds_until_rotation(self, now: float | None = None) -> float | None:
        if self.rotation_seconds is None:
            return None
        now = time.time() if now is None else now
        return self.rotation_seconds - (now % self.rotation_seconds)
