"""The tunnel stream header codec (sans-I/O): round trips, chunking, garbage rejection."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from discretpeer.cli import tunnel
from discretpeer.cli.tunnel import (
    HEADER_SIZE,
    MAGIC,
    MAX_MESSAGE,
    VERSION,
    Decoder,
    FrameType,
    Request,
    Response,
    Status,
    TunnelError,
    decode,
    encode,
    encode_request,
    encode_response,
    truncate_message,
)

printable = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf")), max_size=MAX_MESSAGE // 4
)
requests = st.builds(Request, st.integers(0, 0xFFFF))
responses = st.builds(Response, st.integers(0, 0xFF), printable)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def decode_in_chunks(frame_type: FrameType, data: bytes, cuts: list[int]) -> tuple[object, Decoder]:
    """Feed ``data`` to a decoder in the pieces ``cuts`` make: the frame it returned, and the decoder."""
    decoder = Decoder(frame_type)
    frame = None
    for piece in chunked(data, cuts):
        frame = decoder.feed(piece) or frame
    return frame, decoder


@given(requests, st.binary(max_size=64), st.lists(st.integers(0, 10_000), max_size=6))
def test_request_round_trip_in_any_chunks(request, tail, cuts):
    frame, decoder = decode_in_chunks(FrameType.REQUEST, encode(request) + tail, cuts)
    assert frame == request
    assert decoder.rest == tail
    assert decoder.needed == 0


@given(responses, st.binary(max_size=64), st.lists(st.integers(0, 10_000), max_size=6))
def test_response_round_trip_in_any_chunks(response, tail, cuts):
    frame, decoder = decode_in_chunks(FrameType.RESPONSE, encode(response) + tail, cuts)
    assert frame == response
    assert decoder.rest == tail


@given(requests)
def test_needed_never_reads_past_the_frame(request):
    data = encode(request)
    decoder = Decoder(FrameType.REQUEST)
    position = 0
    while not decoder.done:
        need = decoder.needed
        assert need > 0 and position + need <= len(data)
        decoder.feed(data[position : position + need])
        position += need
    assert position == len(data) and decoder.rest == b""


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_garbage_is_rejected_or_incomplete_never_crashes(data):
    for kind in FrameType:
        decoder = Decoder(kind)
        try:
            frame = decoder.feed(data)
        except TunnelError as exc:
            assert isinstance(exc.status, Status)
            continue
        if frame is None:
            assert decoder.needed > 0
        else:  # only well-formed frames are accepted, and they re-encode to the same bytes
            consumed = len(data) - len(decoder.rest)
            assert encode(frame) == data[:consumed]


@given(st.binary(min_size=1, max_size=3))
def test_bad_magic_is_rejected_at_once(prefix):
    assume(not MAGIC.startswith(prefix))
    with pytest.raises(TunnelError, match="magic"):
        Decoder(FrameType.REQUEST).feed(prefix)


@given(st.integers(0, 255).filter(lambda v: v != VERSION))
def test_other_versions_are_refused_with_the_version_status(version):
    data = struct.pack("!3sBBH", MAGIC, version, FrameType.REQUEST, 2) + b"\x00\x16"
    with pytest.raises(TunnelError) as info:
        decode(data, FrameType.REQUEST)
    assert info.value.status is Status.UNSUPPORTED_VERSION


@given(st.integers(0, 0xFFFF).filter(lambda n: n != 2))
def test_request_body_must_be_exactly_a_port(length):
    data = struct.pack("!3sBBH", MAGIC, VERSION, FrameType.REQUEST, length) + bytes(min(length, 600))
    with pytest.raises(TunnelError) as info:
        decode(data, FrameType.REQUEST)
    assert info.value.status is Status.BAD_REQUEST


def test_wrong_frame_type_and_oversized_response_are_rejected():
    with pytest.raises(TunnelError, match="expected a REQUEST"):
        decode(encode_response(Status.OK), FrameType.REQUEST)
    with pytest.raises(TunnelError, match="expected a RESPONSE"):
        decode(encode_request(22), FrameType.RESPONSE)
    with pytest.raises(TunnelError, match="type 9"):
        decode(struct.pack("!3sBBH", MAGIC, VERSION, 9, 0), FrameType.RESPONSE)
    big = struct.pack("!3sBBH", MAGIC, VERSION, FrameType.RESPONSE, tunnel.MAX_BODY + 1)
    with pytest.raises(TunnelError, match="limit"):
        Decoder(FrameType.RESPONSE).feed(big)  # rejected from the header alone
    with pytest.raises(TunnelError, match="without a status"):
        decode(struct.pack("!3sBBH", MAGIC, VERSION, FrameType.RESPONSE, 0), FrameType.RESPONSE)


@pytest.mark.parametrize("message", [b"\xff\xfe", b"line\nbreak", b"\x1b[2Jclear", "bidi\u202e".encode()])
def test_response_messages_must_be_one_printable_utf8_line(message):
    body = bytes([Status.REFUSED]) + message
    data = struct.pack("!3sBBH", MAGIC, VERSION, FrameType.RESPONSE, len(body)) + body
    with pytest.raises(TunnelError):
        decode(data, FrameType.RESPONSE)


def test_truncated_frames_say_how_much_is_missing():
    data = encode_request(22)
    for cut in range(len(data)):
        with pytest.raises(TunnelError, match="truncated"):
            decode(data[:cut], FrameType.REQUEST)
    assert HEADER_SIZE == 7 and len(data) == 9


@given(st.text(max_size=2000))
def test_any_text_becomes_a_valid_bounded_message(text):
    message = truncate_message(text)
    assert len(message.encode()) <= MAX_MESSAGE
    frame, rest = decode(encode_response(Status.REFUSED, text), FrameType.RESPONSE)
    assert isinstance(frame, Response) and frame.message == message and rest == b""


def test_unknown_status_is_kept_and_not_ok():
    frame, _ = decode(encode(Response(200, "new reason")), FrameType.RESPONSE)
    assert isinstance(frame, Response)
    assert not frame.ok and frame.reason == "status 200" and frame.describe() == "status 200: new reason"
    assert Response(0).ok and Response(Status.NOT_EXPOSED, "x").describe() == "NOT_EXPOSED: x"


@pytest.mark.parametrize("port", [-1, 65536, True, "22"])
def test_invalid_request_values(port):
    with pytest.raises(TunnelError):
        Request(port)


def test_wire_bytes_are_stable():
    assert encode_request(22) == b"DPT\x01\x01\x00\x02\x00\x16"
    assert encode_response(Status.OK) == b"DPT\x01\x02\x00\x01\x00"
    assert encode_response(Status.NOT_EXPOSED, "no") == b"DPT\x01\x02\x00\x03\x01no"
