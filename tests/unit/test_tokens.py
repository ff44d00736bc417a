import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.proto.wire import TOKEN_SIZE
from discretpeer.tokens import MeetingKeys, derive_probe_key, derive_token, meeting_bytes, pair_meeting


@given(st.one_of(st.text(min_size=1, max_size=200), st.binary(min_size=1, max_size=200)), st.integers(0, 2**40))
def test_tokens_are_deterministic_and_sized(meeting, window):
    token = derive_token(meeting, window)
    assert len(token) == TOKEN_SIZE
    assert token == derive_token(meeting, window)
    assert token != derive_token(meeting, window + 1)
    assert token != derive_token(meeting)
    raw = meeting_bytes(meeting)
    assert derive_probe_key(meeting) != token
    if len(raw) >= 8:  # the identifier never shows through (shorter ones may match by chance)
        assert raw not in token


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_distinct_meetings_distinct_tokens(a, b):
    if meeting_bytes(a) != meeting_bytes(b):
        assert derive_token(a) != derive_token(b)


def test_unicode_normalisation():
    assert derive_token("caf\u00e9") == derive_token("cafe\u0301")


def test_rotation_windows_overlap():
    keys = MeetingKeys.derive("secret", rotation_seconds=3600)
    before = keys.tokens(now=3600 * 10 + 3599)
    after = keys.tokens(now=3600 * 11 + 1)
    # a peer one window ahead still shares a token with us
    assert set(before) & set(after)
    assert keys.tokens(now=3600 * 20) != before
    assert MeetingKeys.derive("secret", rotation_seconds=None).tokens(now=0) == (derive_token("secret"),)


def test_bad_meetings():
    with pytest.raises(ValueError):
        meeting_bytes("")
    with pytest.raises(ValueError):
        meeting_bytes(b"x" * 5000)
    with pytest.raises(TypeError):
        meeting_bytes(42)  # type: ignore[arg-type]  # deliberately the wrong type: the error is what is tested
    with pytest.raises(ValueError):
        MeetingKeys.derive("x", rotation_seconds=5)


def test_pair_meeting_is_symmetric():
    assert pair_meeting("a", "b") == pair_meeting("b", "a") != pair_meeting("a", "c")
