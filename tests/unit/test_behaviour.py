"""The behaviour-port codec and the optional wire fields it brings (hypothesis)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from discretpeer import behaviour
from discretpeer.behaviour_probe import classify
from discretpeer.proto import wire

nonces = st.binary(min_size=12, max_size=12)
hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)).map(str)
ports = st.integers(1, 65535)


@given(nonces, hosts, ports)
def test_answer_round_trip_and_never_larger_than_the_request(nonce: bytes, host: str, port: int) -> None:
    request = behaviour.request(nonce)
    assert behaviour.parse_request(request) == nonce
    answer = behaviour.answer(nonce, (host, port))
    assert len(answer) < len(request)  # no amplification
    assert behaviour.parse_answer(answer) == (nonce, (str(ipaddress.ip_address(host)), port))
    assert not request[0] & 0x40 and not answer[0] & 0x40  # never mistaken for QUIC


flags = st.integers(0, 255)
cookies = st.binary(min_size=16, max_size=16)


@given(nonces, flags, cookies)
def test_request_fields_round_trip(nonce: bytes, flag: int, cookie: bytes) -> None:
    request = behaviour.request(nonce, flag, cookie)
    assert len(request) == behaviour.REQUEST_SIZE and not request[0] & 0x40
    assert behaviour.parse_request_fields(request) == behaviour.Request(nonce, flag, cookie)
    assert behaviour.parse_request(request) == nonce  # what an older beacon reads: flags are ignored


@given(nonces)
def test_an_older_clients_request_has_no_flags(nonce: bytes) -> None:
    old = (behaviour.MAGIC + bytes([behaviour.KIND_REQUEST]) + nonce).ljust(64, b"\0")  # its whole layout
    assert old == behaviour.request(nonce)
    assert behaviour.parse_request_fields(old) == behaviour.Request(nonce, 0, behaviour.NO_COOKIE)


@given(nonces, hosts, ports, cookies)
def test_cookie_answer_round_trip_and_smaller_than_the_request(nonce, host, port, cookie) -> None:
    answer = behaviour.cookie_answer(nonce, (host, port), cookie)
    assert len(answer) < behaviour.REQUEST_SIZE and not answer[0] & 0x40
    assert behaviour.parse_cookie_answer(answer) == (nonce, (str(ipaddress.ip_address(host)), port), cookie)
    for parse in (behaviour.parse_answer, behaviour.parse_request, behaviour.parse_hairpin_probe):
        try:
            parse(answer)
        except behaviour.BehaviourError:
            continue
        raise AssertionError(f"{parse.__name__} accepted a cookie answer")


@given(nonces, st.binary(min_size=12, max_size=12))
def test_hairpin_probe_round_trip(nonce: bytes, other: bytes) -> None:
    probe = behaviour.hairpin_probe(nonce)
    assert behaviour.parse_hairpin_probe(probe) == nonce and not probe[0] & 0x40
    if other != nonce:
        try:
            behaviour.parse_hairpin_probe(probe[:17] + other)
        except behaviour.BehaviourError:
            return
        raise AssertionError("a probe whose two nonces differ was accepted")


@given(st.binary(max_size=100))
def test_garbage_raises_only_behaviour_error(data: bytes) -> None:
    for parse in (
        behaviour.parse_request,
        behaviour.parse_request_fields,
        behaviour.parse_answer,
        behaviour.parse_cookie_answer,
        behaviour.parse_hairpin_probe,
    ):
        with contextlib.suppress(behaviour.BehaviourError):
            parse(data)


@given(st.sampled_from([behaviour.KIND_ANSWER, behaviour.KIND_COOKIE_ANSWER]), st.binary(min_size=70, max_size=70))
def test_answers_with_any_body_raise_only_behaviour_error(kind: int, body: bytes) -> None:
    """The right magic, kind and length with anything after them (bad families, port 0, junk)."""
    size = behaviour.ANSWER_SIZE if kind == behaviour.KIND_ANSWER else behaviour.COOKIE_ANSWER_SIZE
    data = (behaviour.MAGIC + bytes([kind]) + body)[:size]
    parse = behaviour.parse_answer if kind == behaviour.KIND_ANSWER else behaviour.parse_cookie_answer
    with contextlib.suppress(behaviour.BehaviourError):
        parse(data)


def test_short_requests_are_not_answered() -> None:
    try:
        behaviour.parse_request(behaviour.request(b"n" * 12)[:40])
    except behaviour.BehaviourError:
        return
    raise AssertionError("a request shorter than its answer was accepted")


addresses = st.builds(wire.Address, st.ip_addresses(v=4).map(str), ports)
mappings = st.sampled_from([None, wire.MAPPING_UNKNOWN, wire.MAPPING_INDEPENDENT, wire.MAPPING_DEPENDENT])


@given(addresses, st.integers(0, 65535), st.one_of(st.none(), ports), mappings, st.binary(min_size=32, max_size=32))
def test_optional_wire_fields_round_trip(observed, max_tokens, behaviour_port, mapping, token) -> None:
    for message in (
        wire.Welcome(version=1, observed=observed, max_tokens=max_tokens, behaviour_port=behaviour_port),
        wire.Announce(add=(token,), candidates=(observed,), mapping=mapping),
        wire.Introduction(token=token, instance=b"i" * wire.INSTANCE_SIZE, observed=observed, mapping=mapping),
    ):
        decoded = wire.FrameDecoder().feed(wire.encode(message))
        assert decoded == [message]
        # for a version-1 connection the optional fields are left out (its decoder refuses them)
        (old,) = wire.FrameDecoder().feed(wire.encode(message, version=1))
        assert old == dataclasses.replace(
            message, **{"behaviour_port" if isinstance(message, wire.Welcome) else "mapping": None}
        )


def test_without_the_new_fields_the_frames_are_unchanged() -> None:
    """A beacon with the behaviour port off speaks exactly the old protocol."""
    observed = wire.Address("203.0.113.5", 4000)
    old = wire.encode(wire.Welcome(version=1, observed=observed, max_tokens=8))
    assert old == wire.encode(wire.Welcome(version=1, observed=observed, max_tokens=8, behaviour_port=None))
    assert len(wire.encode(wire.Welcome(version=1, observed=observed, max_tokens=8, behaviour_port=9))) == len(old) + 2


def test_bad_mapping_value_is_malformed() -> None:
    frame = bytearray(wire.encode(wire.Announce(mapping=wire.MAPPING_DEPENDENT)))
    frame[-1] = 7
    try:
        wire.FrameDecoder().feed(bytes(frame))
    except wire.WireError as exc:
        assert "mapping" in str(exc)
    else:
        raise AssertionError("mapping 7 accepted")


def test_classify() -> None:
    assert classify(("1.2.3.4", 5), ("1.2.3.4", 5)) == wire.MAPPING_INDEPENDENT
    assert classify(("1.2.3.4", 5), ("1.2.3.4", 6)) == wire.MAPPING_DEPENDENT
    assert classify(("1.2.3.4", 5), None) == wire.MAPPING_UNKNOWN
