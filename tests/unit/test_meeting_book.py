"""MeetingBook: the peer's meetings by id and by token (no sockets, times given)."""

from __future__ import annotations

import asyncio

from discretpeer.auth import PeerPolicy
from discretpeer.identity import Identity
from discretpeer.meeting_book import MeetingBook
from discretpeer.tokens import MeetingKeys

ROTATION = 3600
T0 = 1_000_000 * ROTATION + 10.0  # early in a window


def test_register_indexes_the_tokens_and_keeps_one_meeting_per_id() -> None:
    book = MeetingBook(ROTATION)
    first = book.register("secret", PeerPolicy(None), now=T0)
    assert first.tokens == MeetingKeys.derive("secret", ROTATION).tokens(T0) and len(first.tokens) == 2
    assert all(book.by_token(token) is first for token in first.tokens)
    policy = PeerPolicy(Identity.generate().peer_id)
    again = book.register("secret", policy, now=T0)
    assert again is first and first.policy is policy and len(book) == 1
    assert book.find("secret") is first and book.find("other") is None
    assert book.policy_for_token(first.tokens[0]) is policy
    assert book.by_token(b"\0" * 16) is None and book.policy_for_token(b"\0" * 16) is None


def test_only_wanted_meetings_are_announced() -> None:
    book = MeetingBook(ROTATION)
    idle = book.register("idle", PeerPolicy(None), now=T0)
    listening = book.register("listening", PeerPolicy(None), now=T0)
    waiting = book.register("waiting", PeerPolicy(None), now=T0)
    listening.listening = True
    loop = asyncio.new_event_loop()
    try:
        waiting.waiters.append(loop.create_future())
        assert book.wanted_tokens() == set(listening.tokens) | set(waiting.tokens)
        assert not set(idle.tokens) & book.wanted_tokens()
    finally:
        loop.close()


def test_forget_removes_the_meeting_and_its_tokens() -> None:
    book = MeetingBook(None)
    record = book.register("secret", PeerPolicy(None))
    assert len(record.tokens) == 1  # no rotation: one token
    book.forget(record)
    assert len(book) == 0 and book.by_token(record.tokens[0]) is None and list(book) == []
    book.forget(record)  # twice: nothing left to do


def test_tokens_rotate_with_the_window() -> None:
    book = MeetingBook(ROTATION)
    record = book.register("secret", PeerPolicy(None), now=T0)
    old = record.tokens
    assert book.refresh_tokens(now=T0 + 60) is False  # same window
    assert book.refresh_tokens(now=T0 + ROTATION) is True
    assert record.tokens[1] == old[0]  # the previous window's token is still accepted
    assert book.by_token(old[1]) is None and book.by_token(old[0]) is record
    assert all(book.by_token(token) is record for token in record.tokens)
