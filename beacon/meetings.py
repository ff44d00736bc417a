"""The meeting table: which connection waits on which token (sans-I/O).

Plain class, fed by the server, returning the introductions to send. Keys are whatever the
server uses to name a connection. Every map is bounded: tokens per connection and connections
per token are capped, and there is one entry per connection the server admitted.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from discretpeer.wire import Address, Introduction

Key = Hashable


class TooManyTokens(Exception):
    """The announce would leave the connection with more tokens than allowed; nothing changed."""

    def __init__(self, held: int, limit: int) -> None:
        super().__init__(f"announce would hold {held} tokens (max {limit})")
        self.held = held
        self.limit = limit


@dataclass
class _Member:
    instance: bytes
    observed: Address
    candidates: tuple[Address, ...] = ()
    tokens: set[bytes] = field(default_factory=set)


class Announced(NamedTuple):
    introductions: list[tuple[Key, Introduction]]
    full: list[bytes]  # tokens not registered because max_peers_per_token were already on them


class MeetingTable:
    """Tokens → waiting connections; introduces each newcomer to everyone already waiting."""

    def __init__(self, max_tokens_per_connection: int, max_peers_per_token: int) -> None:
        self.max_tokens_per_connection = max_tokens_per_connection
        self.max_peers_per_token = max_peers_per_token
        self._members: dict[Key, _Member] = {}
        self._tokens: dict[bytes, dict[Key, None]] = {}  # insertion-ordered set of holders
        self.tokens_held = 0

    def join(self, key: Key, instance: bytes, observed: Address) -> None:
        """Register a connection (after its Hello). Joining twice keeps its tokens."""
        member = self._members.get(key)
        if member is None:
            self._members[key] = _Member(instance=instance, observed=observed)
        else:
            member.instance, member.observed = instance, observed

    def announce(
        self,
        key: Key,
        add: Iterable[bytes] = (),
        withdraw: Iterable[bytes] = (),
        candidates: tuple[Address, ...] | None = None,
    ) -> Announced:
        """Withdraw, then add tokens; ``candidates`` (if not None) replaces the reported ones.

        Raises :class:`TooManyTokens` (without changing anything) if the result would exceed the
        per-connection cap. Adding a token already held does nothing (no duplicate introduction)."""
        member = self._members[key]
        withdraw_set = set(withdraw) & member.tokens
        new = [t for t in dict.fromkeys(add) if t not in member.tokens or t in withdraw_set]
        held = len(member.tokens) - len(withdraw_set) + len(new)
        if held > self.max_tokens_per_connection:
            raise TooManyTokens(held, self.max_tokens_per_connection)
        for token in withdraw_set:
            self._unhold(key, member, token)
        if candidates is not None:
            member.candidates = tuple(candidates)
        introductions: list[tuple[Key, Introduction]] = []
        full: list[bytes] = []
        for token in new:
            holders = self._tokens.get(token)
            if holders is None:
                holders = self._tokens[token] = {}
            elif len(holders) >= self.max_peers_per_token:
                full.append(token)
                continue
            for other_key in holders:
                other = self._members[other_key]
                if other.instance == member.instance:
                    continue  # the same process on two connections: never introduce it to itself
                introductions.append((key, _introduce(token, other)))
                introductions.append((other_key, _introduce(token, member)))
            holders[key] = None
            member.tokens.add(token)
            self.tokens_held += 1
        return Announced(introductions, full)

    def remove(self, key: Key) -> list[tuple[Key, Introduction]]:
        """Forget a connection and all its tokens (no introductions result)."""
        member = self._members.pop(key, None)
        if member is not None:
            for token in list(member.tokens):
                self._unhold(key, member, token)
        return []

    def _unhold(self, key: Key, member: _Member, token: bytes) -> None:
        member.tokens.discard(token)
        holders = self._tokens.get(token)
        if holders is not None and holders.pop(key, 0) is None:
            self.tokens_held -= 1
            if not holders:
                del self._tokens[token]

    # --- inspection ---------------------------------------------------------------------------

    def tokens_of(self, key: Key) -> frozenset[bytes]:
        member = self._members.get(key)
        return frozenset(member.tokens) if member else frozenset()

    def holders(self, token: bytes) -> list[Key]:
        return list(self._tokens.get(token, ()))

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)

    @property
    def token_count(self) -> int:
        """Distinct tokens someone waits on."""
        return len(self._tokens)


def _introduce(token: bytes, about: _Member) -> Introduction:
    return Introduction(token=token, instance=about.instance, observed=about.observed, candidates=about.candidates)
