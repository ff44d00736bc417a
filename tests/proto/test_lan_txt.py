"""The TXT record codec of LAN discovery (sans-I/O): round trips and strict rejection."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discretpeer.proto.lan_txt import (
    MAX_LAN_TOKENS,
    MAX_TXT_SIZE,
    LanTxt,
    LanTxtError,
    decode_token,
    decode_txt,
    encode_token,
    encode_txt,
    parse_strings,
    split_txt,
    txt_strings,
)

INSTANCE = bytes(range(16))
TOKEN = bytes(range(32))

instances = st.binary(min_size=16, max_size=16)
tokens_st = st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_LAN_TOKENS, unique=True)


def rdata(*strings: bytes) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


def test_format_is_the_documented_one() -> None:
    strings = txt_strings(LanTxt(INSTANCE, (TOKEN, TOKEN[::-1])))
    assert strings[0] == b"v=1"
    assert strings[1] == b"i=000102030405060708090a0b0c0d0e0f"
    assert strings[2] == b"t0=" + base64.urlsafe_b64encode(TOKEN).rstrip(b"=")
    assert strings[3].startswith(b"t1=") and len(strings[3]) == 3 + 43
    assert encode_txt(LanTxt(INSTANCE, (TOKEN,))) == rdata(*txt_strings(LanTxt(INSTANCE, (TOKEN,))))


def test_sixteen_tokens_fit_well_under_the_limit() -> None:
    txt = LanTxt(INSTANCE, tuple(bytes([n]) * 32 for n in range(MAX_LAN_TOKENS)))
    data = encode_txt(txt)
    assert len(data) < 850 < MAX_TXT_SIZE
    assert decode_txt(data) == txt


@given(instances, tokens_st)
def test_round_trip(instance: bytes, tokens: list[bytes]) -> None:
    txt = LanTxt(instance, tuple(tokens))
    assert decode_txt(encode_txt(txt)) == txt
    assert parse_strings(txt_strings(txt)) == txt


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        txt = decode_txt(data)
    except LanTxtError:
        return
    assert len(txt.instance) == 16 and len(txt.tokens) <= MAX_LAN_TOKENS


@given(st.lists(st.binary(max_size=80), max_size=70))
@settings(max_examples=300)
def test_arbitrary_strings_never_crash(strings: list[bytes]) -> None:
    with contextlib.suppress(LanTxtError):
        decode_txt(rdata(*strings))


@given(instances, tokens_st, st.data())
def test_mutations_are_rejected_or_valid(instance: bytes, tokens: list[bytes], data: st.DataObject) -> None:
    """Flip a byte anywhere: the result decodes to a valid record or raises LanTxtError only."""
    encoded = bytearray(encode_txt(LanTxt(instance, tuple(tokens))))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    encoded[pos] = data.draw(st.integers(0, 255))
    try:
        txt = decode_txt(bytes(encoded))
    except LanTxtError:
        return
    assert all(len(t) == 32 for t in txt.tokens)


@given(instances, tokens_st, st.permutations(range(MAX_LAN_TOKENS + 2)))
def test_order_and_case_of_keys_do_not_matter(instance: bytes, tokens: list[bytes], order: list[int]) -> None:
    strings = txt_strings(LanTxt(instance, tuple(tokens)))
    shuffled = [strings[i] for i in order if i < len(strings)]
    shuffled = [s[:1].upper() + s[1:] if n % 2 else s for n, s in enumerate(shuffled)]
    assert decode_txt(rdata(*shuffled)) == LanTxt(instance, tuple(tokens))


def test_unknown_keys_and_empty_strings_are_ignored() -> None:
    data = rdata(b"", b"v=1", b"x=whatever", b"=novalue", b"flag", b"i=" + INSTANCE.hex().encode(), b"tz=1")
    assert decode_txt(data) == LanTxt(INSTANCE, ())


def test_first_occurrence_of_a_key_wins() -> None:
    data = rdata(b"v=1", b"i=" + INSTANCE.hex().encode(), b"I=" + bytes(16).hex().encode(), b"v=2")
    assert decode_txt(data).instance == INSTANCE


def test_duplicate_token_values_are_merged() -> None:
    t = encode_token(TOKEN)
    data = rdata(b"v=1", b"i=" + INSTANCE.hex().encode(), b"t0=" + t, b"t5=" + t)
    assert decode_txt(data).tokens == (TOKEN,)


GOOD_I = b"i=" + INSTANCE.hex().encode()
GOOD_T = encode_token(TOKEN)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * (MAX_TXT_SIZE + 1), "bytes (max"),
        (b"\x05v=1", "truncated"),
        (rdata(GOOD_I), "no v="),
        (rdata(b"v", GOOD_I), "unsupported TXT version"),
        (rdata(b"v=2", GOOD_I), "unsupported TXT version"),
        (rdata(b"v=1"), "i= must be"),
        (rdata(b"v=1", b"i=00"), "i= must be"),
        (rdata(b"v=1", b"i= " + INSTANCE.hex().encode()[1:]), "i= must be"),
        (rdata(b"v=1", b"i=" + b"g" * 32), "i= must be"),
        (rdata(b"v=1", GOOD_I, b"t0"), "has no value"),
        (rdata(b"v=1", GOOD_I, b"t0="), "characters"),
        (rdata(b"v=1", GOOD_I, b"t0=" + GOOD_T + b"A"), "characters"),
        (rdata(b"v=1", GOOD_I, b"t0=" + GOOD_T[:-1] + b"+"), "not base64url"),
        (rdata(b"v=1", GOOD_I, b"t0=" + GOOD_T[:-1] + b"B"), "not canonical"),
        (rdata(b"v=1", GOOD_I, b"t16=" + GOOD_T), "max t15"),
        (rdata(b"v=1", GOOD_I, b"t01=" + GOOD_T), "bad token key"),
        (rdata(b"v=1", GOOD_I, b"t\x01=x"), "printable ASCII"),
        (rdata(*[b"z"] * 65), "more than 64"),
    ],
)
def test_garbage_is_rejected_with_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(LanTxtError, match=message.replace("(", r"\(")):
        decode_txt(data)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(LanTxtError):
        split_txt("v=1")  # type: ignore[arg-type]  # deliberately the wrong type: the error is what is tested


def test_encoder_validates() -> None:
    with pytest.raises(LanTxtError):
        LanTxt(b"short")
    with pytest.raises(LanTxtError):
        LanTxt(INSTANCE, (b"short",))
    with pytest.raises(LanTxtError, match="17 tokens"):
        LanTxt(INSTANCE, tuple(bytes([n]) * 32 for n in range(MAX_LAN_TOKENS + 1)))


@given(st.binary(min_size=32, max_size=32))
def test_token_text_round_trip(token: bytes) -> None:
    assert len(encode_token(token)) == 43
    assert decode_token(encode_token(token)) == token
