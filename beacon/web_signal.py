"""Signalling rooms for the browser shell (sans-I/O): who waits on which token, what to forward.

A browser and a device that share a secret derive the same token (HKDF, as the QUIC meetings do) and
both *listen* on it over a WebSocket; a ``send`` on a token goes to the other listeners of that token.
The beacon sees tokens and opaque JSON (SDP offers, answers, SPAKE2 messages), never an identity.

Messages are JSON objects, version 1::

    client -> beacon  {"v":1,"t":"listen","tokens":[hex64, ...]}   replaces the set this client waits on
                      {"v":1,"t":"send","token":hex64,"data":{...}} forwarded to the token's other members
                      {"v":1,"t":"turn","token":hex64}              TURN credentials (only if not alone)
    beacon -> client  {"v":1,"t":"msg","token":hex64,"data":{...}}
                      {"v":1,"t":"present","token":hex64,"count":n,"urls":[...]} members of a token changed
                                                                    (+ the beacon's STUN urls)
                      {"v":1,"t":"turn","urls":[...],"username":..,"credential":..,"ttl":n}
                      {"v":1,"t":"error","reason":"..."}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ClientMessage",
    "Rooms",
    "SignalError",
    "encode",
    "parse_client_message",
    "turn_credentials",
]

VERSION = 1
MAX_MESSAGE_BYTES = 32768  # an SDP offer with a few candidates is ~2-6 KB; a SPAKE2 message far less
TOKEN_HEX_LEN = 64


class SignalError(ValueError):
    """A client message that is refused; ``str(exc)`` is the reason told to the client."""


@dataclass(frozen=True)
class ClientMessage:
    kind: str  # "listen" | "send" | "turn"
    tokens: tuple[str, ...] = ()
    data: dict[str, Any] | None = None


def _token(value: Any) -> str:
    if not isinstance(value, str) or len(value) != TOKEN_HEX_LEN:
        raise SignalError("a token is 64 lowercase hex digits")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise SignalError("a token is 64 lowercase hex digits") from None
    if value != value.lower():
        raise SignalError("a token is 64 lowercase hex digits")
    return value


def parse_client_message(raw: str | bytes, *, max_tokens: int) -> ClientMessage:
    """Validate one client message strictly; raise :class:`SignalError` naming what is wrong."""
    if isinstance(raw, bytes):
        raise SignalError("binary messages are not accepted: send JSON text")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise SignalError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise SignalError("message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignalError("message must be a JSON object")
    if obj.get("v") != VERSION:
        raise SignalError(f"unsupported version {obj.get('v')!r} (this beacon speaks {VERSION})")
    kind = obj.get("t")
    if kind == "listen":
        tokens = obj.get("tokens")
        if not isinstance(tokens, list):
            raise SignalError("listen needs a list of tokens")
        if len(tokens) > max_tokens:
            raise SignalError(f"too many tokens (at most {max_tokens})")
        return ClientMessage("listen", tuple(dict.fromkeys(_token(t) for t in tokens)))
    if kind == "send":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise SignalError("send needs a data object")
        return ClientMessage("send", (_token(obj.get("token")),), data)
    if kind == "turn":
        return ClientMessage("turn", (_token(obj.get("token")),))
    raise SignalError(f"unknown message type {kind!r}")


def encode(kind: str, **fields: Any) -> str:
    return json.dumps({"v": VERSION, "t": kind, **fields}, separators=(",", ":"))


def turn_credentials(secret: bytes, ttl: int, now: float, name: str = "web") -> tuple[str, str]:
    """TURN REST API credentials (coturn ``use-auth-secret``): ``expiry:name`` and its HMAC-SHA1."""
    username = f"{int(now) + ttl}:{name}"
    credential = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
    return username, credential


@dataclass
class Rooms:
    """Token -> listening clients, bounded. Clients are any hashable handle."""

    max_tokens_per_client: int = 256
    max_members_per_token: int = 8
    members: dict[str, set[Any]] = field(default_factory=dict)
    tokens_of: dict[Any, frozenset[str]] = field(default_factory=dict)

    def listen(self, client: Any, tokens: tuple[str, ...]) -> tuple[set[str], list[str]]:
        """Replace ``client``'s tokens; return (tokens whose membership changed, tokens refused as full)."""
        if len(tokens) > self.max_tokens_per_client:
            raise SignalError(f"too many tokens (at most {self.max_tokens_per_client})")
        old = self.tokens_of.get(client, frozenset())
        new: set[str] = set()
        full: list[str] = []
        for token in tokens:
            room = self.members.get(token)
            if token not in old and room is not None and len(room) >= self.max_members_per_token:
                full.append(token)
                continue
            new.add(token)
        for token in old - new:
            self._remove(client, token)
        for token in new - old:
            self.members.setdefault(token, set()).add(client)
        self.tokens_of[client] = frozenset(new)
        if not new:
            del self.tokens_of[client]
        return (set(old) ^ new), full

    def leave(self, client: Any) -> set[str]:
        """Forget ``client``; return the tokens it left."""
        old = self.tokens_of.pop(client, frozenset())
        for token in old:
            self._remove(client, token)
        return set(old)

    def _remove(self, client: Any, token: str) -> None:
        room = self.members.get(token)
        if room is not None:
            room.discard(client)
            if not room:
                del self.members[token]

    def others(self, client: Any, token: str) -> list[Any]:
        """The other listeners of ``token``; refuses a client that does not listen on it itself."""
        if token not in self.tokens_of.get(client, frozenset()):
            raise SignalError("send or turn on a token you do not listen on")
        return [c for c in self.members.get(token, ()) if c is not client]

    def count(self, token: str) -> int:
        return len(self.members.get(token, ()))
