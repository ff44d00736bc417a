"""The pairing exchange without sockets: codes, the PAKE, the confirmations, the config edit."""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discretpeer.cli.config_edit import add_peer
from discretpeer.cli.pairing import (
    HEADER,
    MAX_PAYLOAD,
    Code,
    MessageType,
    PairingError,
    Pake,
    WrongCode,
    check_name,
    decode_header,
    encode,
    new_code,
    parse_code,
    suggested_name,
)
from discretpeer.cli.settings import load_settings
from discretpeer.cli.words import WORDS
from discretpeer.identity import Identity

A, INV, M = (Identity.generate().peer_id for _ in range(3))
codes = st.builds(Code, st.integers(1, 999), st.tuples(st.sampled_from(WORDS), st.sampled_from(WORDS)))


def exchange(inviter_code: Code, accepter_code: Code, *, inviter_sees: str = A, accepter_sees: str = INV):
    inviter, accepter = Pake(inviter_code, inviter=True), Pake(accepter_code, inviter=False)
    hello_a, hello_i = accepter.hello(), inviter.hello()
    inviter.finish(hello_a)
    accepter.finish(hello_i)
    name_a = inviter.check(accepter.confirm(A, accepter_sees, "laptop"), INV, inviter_sees)
    name_i = accepter.check(inviter.confirm(INV, inviter_sees, "pi"), A, accepter_sees)
    return name_a, name_i


@settings(max_examples=200, deadline=None)
@given(codes)
def test_codes_round_trip(code):
    assert parse_code(str(code)) == code
    assert parse_code(str(code).upper().replace("-", " ")) == code
    assert str(code.number) in code.meeting and code.words[0] not in code.meeting  # words never reach the beacon


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_code_never_crashes(text):
    with contextlib.suppress(PairingError):
        parse_code(text)


def test_new_codes_are_valid_and_vary():
    made = {str(new_code()) for _ in range(200)}
    assert len(made) > 190 and all(parse_code(c) for c in made)


@settings(max_examples=10, deadline=None)
@given(codes)
def test_same_code_pairs_with_names(code):
    assert exchange(code, code) == ("laptop", "pi")


@settings(max_examples=10, deadline=None)
@given(codes, codes)
def test_a_different_code_is_a_wrong_code(one, other):
    if one == other:
        return
    with pytest.raises(WrongCode):
        exchange(one, other)


def test_ids_are_bound_a_relaying_man_in_the_middle_is_caught():
    """M relays the PAKE messages between its own two connections: the inviter sees M's id where
    the accepter's MAC names I (what the accepter's connection proved)... and vice versa."""
    code = new_code()
    with pytest.raises(WrongCode):
        exchange(code, code, inviter_sees=M)
    with pytest.raises(WrongCode):
        exchange(code, code, accepter_sees=M)


def test_bad_pake_messages_are_pairing_errors():
    pake = Pake(new_code(), inviter=True)
    pake.hello()
    with pytest.raises(PairingError, match="protocol"):
        pake.finish(b"nope" + bytes(33))
    other = Pake(new_code(), inviter=True)
    other.hello()
    with pytest.raises(PairingError):
        other.finish(b"DPI1" + bytes(33))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=HEADER.size, max_size=HEADER.size))
def test_headers_are_checked(raw):
    try:
        kind, length = decode_header(raw)
    except PairingError:
        return
    assert kind in MessageType and length <= MAX_PAYLOAD


def test_encode_bounds():
    assert decode_header(encode(MessageType.CONFIRM, b"x" * 40)[: HEADER.size]) == (MessageType.CONFIRM, 40)
    with pytest.raises(ValueError):
        encode(MessageType.HELLO, bytes(MAX_PAYLOAD + 1))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_suggested_names_are_valid(text):
    assert check_name(suggested_name(text)) == suggested_name(text)


def test_add_peer_keeps_other_keys_and_mode(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'beacons = [{hostname = "b.example:4264", cert_hash = "' + "A" * 43 + '"}]\nlan = true\n'
        f'allow = ["{M}"]\n\n[peers]\npi = "{M}"\n'
    )
    os.chmod(path, 0o640)
    assert add_peer(path, "pi", A) == ("pi-2", True)  # "pi" is taken by another peer
    assert add_peer(path, "laptop", A) == ("pi-2", False)  # already there: unchanged
    data = tomllib.loads(path.read_text())
    assert data["lan"] is True and data["beacons"][0]["hostname"] == "b.example:4264"
    assert data["peers"] == {"pi": M, "pi-2": A} and data["allow"] == [M, "pi-2"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = tmp_path / "new" / "config.toml"
    assert add_peer(fresh, "laptop", INV) == ("laptop", True)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600

    class Args:
        config = str(fresh)

    assert load_settings(Args(), {"HOME": str(tmp_path)}).allow == [INV]  # what expose will read
