"""Property tests of the shared wire formats: arbitrary bytes only ever raise the format's own
error, valid messages round-trip (also through the incremental decoder, split anywhere)."""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from discretpeer.proto import probe, relay_frame, wire
from discretpeer.proto.wire import Address, WireError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
tokens = st.binary(min_size=wire.TOKEN_SIZE, max_size=wire.TOKEN_SIZE)
instances = st.binary(min_size=wire.INSTANCE_SIZE, max_size=wire.INSTANCE_SIZE)
session_ids = st.binary(min_size=8, max_size=8)
addresses = st.builds(
    lambda ip, port: Address(str(ip), port),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(1, 65535),
)
candidate_lists = st.lists(addresses, max_size=wire.MAX_CANDIDATES).map(tuple)
texts = st.text(max_size=60)  # at most 240 bytes of UTF-8: never truncated

messages = st.one_of(
    st.builds(wire.Hello, version=u16, instance=instances),
    st.builds(wire.Welcome, version=u16, observed=addresses, max_tokens=u16),
    st.builds(
        wire.Announce,
        add=st.lists(tokens, max_size=50).map(tuple),
        withdraw=st.lists(tokens, max_size=50).map(tuple),
        candidates=st.none() | candidate_lists,
    ),
    st.builds(wire.Introduction, token=tokens, instance=instances, observed=addresses, candidates=candidate_lists),
    st.builds(wire.Error, code=u16, message=texts, fatal=st.booleans()),
    st.builds(wire.Ping, nonce=u64),
    st.builds(wire.Pong, nonce=u64),
    st.builds(wire.RelayRequest, token=tokens, instance=instances),
    st.builds(
        wire.RelayGrant,
        token=tokens,
        instance=instances,
        session_id=session_ids,
        max_bytes=u64,
        max_seconds=u32,
        rate_bytes_per_second=u32,
    ),
    st.builds(wire.RelayEnd, session_id=session_ids, code=u16, message=texts),
)


def encodable(message: wire.Message) -> bytes:
    try:
        return wire.encode(message)
    except WireError as exc:
        assume(exc.code != wire.ErrorCode.FRAME_TOO_LARGE)  # big announces may exceed MAX_FRAME
        raise


@SETTINGS
@given(st.binary(max_size=600))
def test_decode_body_raises_only_wire_error(data):
    try:
        message = wire.decode_body(data)
    except WireError:
        return
    # what decodes is canonical: encoding it gives the same bytes back
    assert wire.encode(message)[2:] == data


@SETTINGS
@given(st.integers(0, 0x12).flatmap(lambda kind: st.binary(max_size=300).map(lambda rest: bytes([kind]) + rest)))
def test_decode_body_typed_garbage(data):
    with contextlib.suppress(WireError):
        wire.decode_body(data)


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_frame_decoder_raises_only_wire_error(chunks):
    decoder = wire.FrameDecoder()
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert isinstance(message, wire.Message.__args__)
    except WireError:
        pass


@SETTINGS
@given(messages)
def test_round_trip(message):
    frame = encodable(message)
    assert int.from_bytes(frame[:2], "big") == len(frame) - 2 <= wire.MAX_FRAME
    assert wire.decode_body(frame[2:]) == message


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=6), st.data())
def test_stream_round_trip_split_anywhere(batch, data):
    stream = b"".join(encodable(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = wire.FrameDecoder()
    out = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == batch and decoder.buffered == 0


@SETTINGS
@given(st.integers(wire.MAX_FRAME + 1, 2**16 - 1))
def test_oversized_length_is_rejected_at_once(length):
    decoder = wire.FrameDecoder()
    try:
        decoder.feed(length.to_bytes(2, "big"))
    except WireError as exc:
        assert exc.code == wire.ErrorCode.FRAME_TOO_LARGE
    else:
        raise AssertionError("oversized frame accepted")


# --- relay datagrams ------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=1600))
def test_relay_frame_parser_raises_only_its_error(data):
    try:
        session_id, payload = relay_frame.parse_relay_frame(data)
    except relay_frame.RelayFrameError:
        return
    assert relay_frame.build_relay_frame(session_id, payload) == data


@SETTINGS
@given(session_ids, st.binary(min_size=1, max_size=relay_frame.MAX_RELAY_PAYLOAD))
def test_relay_frame_round_trip(session_id, payload):
    frame = relay_frame.build_relay_frame(session_id, payload)
    assert not probe.is_quic(frame)
    assert relay_frame.parse_relay_frame(frame) == (session_id, payload)


# --- punch probes ---------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=200))
def test_probe_parser_raises_only_its_error(data):
    try:
        parsed = probe.parse_probe(data)
    except probe.ProbeError:
        return
    assert parsed.signed_part() + parsed.tag == data


@SETTINGS
@given(st.sampled_from(list(probe.ProbeKind)), tokens, instances, session_ids, st.binary(min_size=1, max_size=64))
def test_probe_round_trip_and_tag(kind, token, instance, nonce, seed):
    key = hashlib.sha256(seed).digest()
    datagram = probe.build_probe(kind, token, instance, nonce, key)
    parsed = probe.parse_probe(datagram)
    assert (parsed.kind, parsed.token, parsed.instance, parsed.nonce) == (kind, token, instance, nonce)
    assert parsed.verify(key)
    assert not parsed.verify(hashlib.sha256(key).digest())
    assert not probe.is_quic(datagram)


@SETTINGS
@given(tokens, st.text(max_size=300))
def test_token_full_message_names_its_token(token, text):
    message = wire.token_full_message(token, text)
    assert len(message) <= wire.MAX_ERROR_MESSAGE
    assert wire.token_of_full_message(message) == token
    # and survives the Error frame's codec (the message is cut to MAX_ERROR_MESSAGE bytes there)
    [decoded] = wire.FrameDecoder().feed(wire.encode(wire.Error(code=wire.ErrorCode.TOKEN_FULL, message=message)))
    assert wire.token_of_full_message(decoded.message) == token


@SETTINGS
@given(st.text(max_size=300))
def test_token_of_full_message_takes_any_text(text):
    token = wire.token_of_full_message(text)
    assert token is None or (len(token) == wire.TOKEN_SIZE and text.startswith(token.hex() + ":"))
