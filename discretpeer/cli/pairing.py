"""Pairing by short code (sans-I/O): the code, the meeting it names, and the messages of the PAKE.

A code is ``NUMBER-WORD-WORD`` (``7-apple-river``). The number (1..999) is its public part: it
names the meeting both machines join on the beacon (like magic-wormhole's nameplate), so the
beacon's tokens, derived from it, say nothing about the words. The whole code is the password of
a SPAKE2 exchange run over the verified peer connection: a wrong code yields a different key, and
an attacker who joins the meeting learns only whether its one guess (1 in 65,536) was right; the
inviter stops after the first attempt, right or wrong, so each code allows one guess.

Then each side proves it holds the key with an HMAC over both peer ids (as its own connection
proved them) and the name it suggests: a man in the middle that relays the PAKE between two
connections of its own is caught there, since the ids it shows the two sides differ.

Messages on one stream, each ``u8 type | u16 length | payload``, the accepting side first::

    accepter -> inviter   HELLO    "DPI1" | SPAKE2 message (side A)
    inviter  -> accepter  HELLO    "DPI1" | SPAKE2 message (side B)
    accepter -> inviter   CONFIRM  HMAC (32 bytes) | suggested name (UTF-8)
    inviter  -> accepter  CONFIRM  (the same, the inviter's)   or  REFUSED | reason (UTF-8)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass

from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from .words import WORDS

MAX_NUMBER = 999
MAGIC = b"DPI1"
MAC_SIZE = 32
MAX_PAYLOAD = 512
MAX_NAME = 32
HEADER = struct.Struct("!BH")
ID_ACCEPTER = b"discretpeer invite v1: accepter"
ID_INVITER = b"discretpeer invite v1: inviter"
CONFIRM_LABEL = b"discretpeer invite v1: confirm"
_WORD_INDEX = {word: index for index, word in enumerate(WORDS)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class PairingError(Exception):
    """A code that cannot be read, or an exchange that failed (the text says which)."""


class WrongCode(PairingError):
    """The other side's key is not ours: one of the two codes differs."""


@dataclass(frozen=True)
class Code:
    number: int
    words: tuple[str, str]

    def __str__(self) -> str:
        return f"{self.number}-{self.words[0]}-{self.words[1]}"

    @property
    def meeting(self) -> str:
        """What both sides meet on (the number only: the words never reach the beacon)."""
        return f"discretpeer invite v1 #{self.number}"

    @property
    def password(self) -> bytes:
        return str(self).encode()


def new_code() -> Code:
    return Code(secrets.randbelow(MAX_NUMBER) + 1, (secrets.choice(WORDS), secrets.choice(WORDS)))


def parse_code(text: str) -> Code:
    """``7-apple-river`` (spaces or dashes, any case) -> Code; PairingError says what is wrong."""
    parts = [p for p in re.split(r"[\s-]+", text.strip().lower()) if p]
    if len(parts) != 3 or not parts[0].isdigit():
        raise PairingError(f"{text!r} is not an invitation code: expected NUMBER-WORD-WORD, e.g. 7-apple-river")
    number = int(parts[0])
    if not 1 <= number <= MAX_NUMBER:
        raise PairingError(f"invitation code {text!r}: the number must be 1..{MAX_NUMBER}")
    unknown = [word for word in parts[1:] if word not in _WORD_INDEX]
    if unknown:
        raise PairingError(
            f"invitation code {text!r}: {', '.join(repr(w) for w in unknown)} is not one of the "
            "code words (check the spelling)"
        )
    return Code(number, (parts[1], parts[2]))


def check_name(name: str) -> str:
    """A name for [peers] (and the allow list): letters, digits, ``_ . -``, at most 32."""
    if not _NAME.match(name):
        raise PairingError(
            f"invalid name {name!r}: 1..{MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def suggested_name(text: str) -> str:
    """A usable name from anything (e.g. the other side's host name); "peer" if nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")[:MAX_NAME].strip("-_.")
    return cleaned if cleaned and _NAME.match(cleaned) else "peer"


class MessageType(enum.IntEnum):
    HELLO = 1
    CONFIRM = 2
    REFUSED = 3


def encode(kind: MessageType, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("pairing message too long")
    return HEADER.pack(kind, len(payload)) + payload


def decode_header(header: bytes) -> tuple[MessageType, int]:
    kind, length = HEADER.unpack(header)
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise PairingError(f"the other side sent an unknown pairing message (type {kind})") from None
    if length > MAX_PAYLOAD:
        raise PairingError(f"the other side sent a pairing message of {length} bytes (limit {MAX_PAYLOAD})")
    return message_type, length


class Pake:
    """One side of the exchange: ``hello()`` -> send; ``finish(their hello)``; then confirmations."""

    def __init__(self, code: Code, *, inviter: bool) -> None:
        self.inviter = inviter
        side = SPAKE2_B if inviter else SPAKE2_A
        self._spake = side(code.password, idA=ID_ACCEPTER, idB=ID_INVITER)
        self._key: bytes | None = None

    def hello(self) -> bytes:
        return MAGIC + self._spake.start()

    def finish(self, payload: bytes) -> None:
        if not payload.startswith(MAGIC):
            raise PairingError("the other side does not speak this pairing protocol")
        try:
            self._key = self._spake.finish(payload[len(MAGIC) :])
        except (SPAKEError, NotOnCurve, ValueError) as exc:
            raise PairingError(f"invalid PAKE message from the other side ({type(exc).__name__})") from None

    def _mac(self, role: bytes, mine: str, theirs: str, name: str) -> bytes:
        assert self._key is not None, "finish() first"
        fields = [CONFIRM_LABEL, role, mine.encode(), theirs.encode(), name.encode()]
        message = b"".join(struct.pack("!H", len(f)) + f for f in fields)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def confirm(self, my_id: str, their_id: str, name: str) -> bytes:
        """Our CONFIRM payload: proves the key, bound to both ids and the name we suggest."""
        role = b"I" if self.inviter else b"A"
        return self._mac(role, my_id, their_id, name) + name.encode()

    def check(self, payload: bytes, my_id: str, their_id: str) -> str:
        """Verify the other side's CONFIRM (``their_id`` as our connection proved it); returns
        the name it suggests. Raises WrongCode."""
        mac, raw_name = payload[:MAC_SIZE], payload[MAC_SIZE:]
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise PairingError("the other side's suggested name is not UTF-8") from None
        role = b"A" if self.inviter else b"I"
        if len(mac) != MAC_SIZE or not hmac.compare_digest(mac, self._mac(role, their_id, my_id, name)):
            raise WrongCode("the codes do not match")
        return name
