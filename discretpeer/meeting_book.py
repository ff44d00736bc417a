"""The meetings a peer waits on, by meeting id and by token (sans-I/O).

The peer's side of :mod:`beacon.meetings`: the beacon maps tokens to the connections waiting on
them; a peer maps the tokens it announces to its own meetings, so that an introduction, a probe
or an incoming connection naming a token finds the meeting (its policy, its waiters). Tokens
rotate with time (:meth:`MeetingBook.refresh_tokens`); announcing them is the owner's job.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from discretpeer.tokens import MeetingKeys

if TYPE_CHECKING:
    from discretpeer.auth import PeerPolicy
    from discretpeer.connection import PeerConnection


@dataclass
class Meeting:
    """One meeting: its keys, who may come, who waits (``connect()`` calls or ``listen()``),
    and what went wrong (for the report of a failed ``connect()``)."""

    keys: MeetingKeys
    policy: PeerPolicy
    tokens: tuple[bytes, ...]
    listening: bool = False
    waiters: list[asyncio.Future[PeerConnection]] = field(default_factory=list)
    introductions: int = 0
    failures: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=8))
    refusals: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=4))  # TOKEN_FULL

    @property
    def id(self) -> bytes:
        return self.keys.meeting

    @property
    def wanted(self) -> bool:
        return self.listening or bool(self.waiters)


class MeetingBook:
    """Meeting id → meeting, and each of its current tokens → meeting."""

    def __init__(self, rotation_seconds: int | None) -> None:
        self.rotation_seconds = rotation_seconds
        self._meetings: dict[bytes, Meeting] = {}
        self._by_token: dict[bytes, Meeting] = {}

    def keys(self, meeting: str | bytes) -> MeetingKeys:
        return MeetingKeys.derive(meeting, self.rotation_seconds)

    def register(self, meeting: str | bytes, policy: PeerPolicy, now: float | None = None) -> Meeting:
        """The meeting (new, or known: then ``policy`` replaces its policy). ``now``: wall-clock
        time of the token window (default: the current time)."""
        keys = self.keys(meeting)
        booked = self._meetings.get(keys.meeting)
        if booked is None:
            booked = Meeting(keys=keys, policy=policy, tokens=keys.tokens(now))
            self._meetings[keys.meeting] = booked
            for token in booked.tokens:
                self._by_token[token] = booked
        else:
            booked.policy = policy
        return booked

    def find(self, meeting: str | bytes) -> Meeting | None:
        return self._meetings.get(self.keys(meeting).meeting)

    def forget(self, meeting: Meeting) -> None:
        self._meetings.pop(meeting.id, None)
        for token in meeting.tokens:
            if self._by_token.get(token) is meeting:
                del self._by_token[token]

    def by_token(self, token: bytes) -> Meeting | None:
        return self._by_token.get(token)

    def policy_for_token(self, token: bytes) -> PeerPolicy | None:
        meeting = self._by_token.get(token)
        return meeting.policy if meeting is not None else None

    def wanted_tokens(self) -> set[bytes]:
        """The tokens to announce: those of meetings someone waits on."""
        return {token for token, meeting in self._by_token.items() if meeting.wanted}

    def refresh_tokens(self, now: float | None = None) -> bool:
        """Move each meeting to its tokens of the current time window; True if any changed."""
        changed = False
        for meeting in self._meetings.values():
            tokens = meeting.keys.tokens(now)
            if tokens != meeting.tokens:
                for token in meeting.tokens:
                    if self._by_token.get(token) is meeting:
                        del self._by_token[token]
                meeting.tokens = tokens
                for token in tokens:
                    self._by_token[token] = meeting
                changed = True
        return changed

    def __iter__(self) -> Iterator[Meeting]:
        return iter(list(self._meetings.values()))

    def __len__(self) -> int:
        return len(self._meetings)
