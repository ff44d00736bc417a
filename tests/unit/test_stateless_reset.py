"""Stateless reset tokens and packets (sans-I/O): derivation properties and the §10.3 rules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.stateless_reset import (
    MAX_RESET_SIZE,
    MIN_RESET_SIZE,
    MIN_TRIGGER_SIZE,
    TOKEN_SIZE,
    encode_reset,
    is_reset,
    reset_key,
    reset_size,
    reset_token,
    should_answer,
)

secrets = st.binary(min_size=1, max_size=64)
cids = st.binary(min_size=1, max_size=20)


@given(secrets, cids)
def test_token_is_deterministic_and_16_bytes(secret, cid):
    key = reset_key(secret)
    token = reset_token(key, cid)
    assert len(token) == TOKEN_SIZE
    assert token == reset_token(reset_key(secret), cid)  # a restarted beacon derives the same


@given(secrets, secrets, cids)
def test_token_depends_on_the_key(a, b, cid):
    if a != b:
        assert reset_key(a) != reset_key(b)
        assert reset_token(reset_key(a), cid) != reset_token(reset_key(b), cid)


@given(secrets, cids, cids)
def test_token_depends_on_the_cid(secret, a, b):
    key = reset_key(secret)
    if a != b:
        assert reset_token(key, a) != reset_token(key, b)


@given(secrets)
def test_key_is_not_the_secret(secret):
    key = reset_key(secret)
    assert len(key) == 32 and key != secret[:32]


def test_empty_secret_refused():
    with pytest.raises(ValueError, match="empty"):
        reset_key(b"")


@given(st.integers(0, 65535))
def test_reset_is_smaller_than_its_trigger(trigger):
    size = reset_size(trigger)
    if trigger < MIN_TRIGGER_SIZE:
        assert size is None
    else:
        assert size is not None and MIN_RESET_SIZE <= size < trigger and size <= MAX_RESET_SIZE


@given(st.binary(min_size=TOKEN_SIZE, max_size=TOKEN_SIZE), st.integers(MIN_RESET_SIZE, MAX_RESET_SIZE))
def test_encoded_reset_is_recognised_by_its_token_only(token, size):
    packet = encode_reset(token, size)
    assert len(packet) == size
    assert packet[0] & 0xC0 == 0x40  # looks like a short-header QUIC packet
    assert packet.endswith(token)
    assert is_reset(packet, [b"\x00" * 16, token])
    other = bytes(b ^ 0x01 for b in token)
    assert not is_reset(packet, [other])
    assert not is_reset(packet, [])


@given(st.binary(max_size=200))
def test_random_datagrams_are_not_resets_without_their_token(data):
    token = b"\xa5" * TOKEN_SIZE
    assert is_reset(data, [token]) == (len(data) >= MIN_RESET_SIZE and data[0] & 0xC0 == 0x40 and data.endswith(token))


@given(st.binary(max_size=1500))
def test_only_short_headers_big_enough_are_answered(data):
    assert should_answer(data) == (len(data) >= MIN_TRIGGER_SIZE and data[0] & 0xC0 == 0x40)


def test_a_chain_of_resets_dies_out():
    """Two endpoints that both answered every unknown packet with a reset stop within a few rounds."""
    size: int | None = 1500
    rounds = 0
    while size is not None:
        packet = encode_reset(b"\x01" * TOKEN_SIZE, size) if rounds else b"\x40" * size
        assert should_answer(packet) == (len(packet) >= MIN_TRIGGER_SIZE)
        size = reset_size(len(packet))
        rounds += 1
    assert rounds <= MAX_RESET_SIZE - MIN_RESET_SIZE + 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="16 bytes"):
        encode_reset(b"short", 30)
    with pytest.raises(ValueError, match="outside"):
        encode_reset(b"\x00" * 16, MIN_RESET_SIZE - 1)
