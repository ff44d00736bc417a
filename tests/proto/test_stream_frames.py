"""Property tests of the TLS/TCP stream codec: messages and relay datagrams round-trip through
the incremental decoder split anywhere; arbitrary bytes only raise WireError; the buffer never
holds more than one item; an oversized prefix is refused as soon as its kind byte is in."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discretpeer.proto import wire
from discretpeer.proto.relay_frame import RELAY_DATA, RELAY_HEADER_SIZE, build_relay_frame
from discretpeer.proto.stream_frames import MAX_DATAGRAM, StreamDecoder, encode_datagram, encode_message
from discretpeer.proto.wire import WireError

_spec = importlib.util.spec_from_file_location("wire_properties", Path(__file__).with_name("test_wire_properties.py"))
assert _spec is not None and _spec.loader is not None
_props = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("wire_properties", _props)
_spec.loader.exec_module(_props)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
datagrams = st.builds(build_relay_frame, st.binary(min_size=8, max_size=8), st.binary(min_size=1, max_size=2000))
items = st.one_of(_props.messages, datagrams)


def _encode(item) -> bytes:
    return encode_datagram(item) if isinstance(item, bytes) else encode_message(item)


@SETTINGS
@given(st.lists(items, max_size=12), st.lists(st.integers(0, 200), max_size=30))
def test_items_round_trip_split_anywhere(sent, cuts):
    stream = b"".join(_encode(i) for i in sent)
    decoder = StreamDecoder()
    received = []
    position = 0
    for cut in cuts:
        received += decoder.feed(stream[position : position + cut])
        position += cut
        assert decoder.buffered <= 2 + MAX_DATAGRAM
    received += decoder.feed(stream[position:])
    assert received == [wire.decode_body(wire.encode(i)[2:]) if not isinstance(i, bytes) else i for i in sent]
    assert decoder.buffered == 0


@SETTINGS
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_arbitrary_bytes_only_raise_wire_errors(data, step):
    decoder = StreamDecoder()
    try:
        for start in range(0, len(data), step):
            decoder.feed(data[start : start + step])
            assert decoder.buffered <= 2 + MAX_DATAGRAM
    except WireError:
        pass


@SETTINGS
@given(st.integers(wire.MAX_FRAME + 1, 65535), st.integers(MAX_DATAGRAM + 1, 65535))
def test_oversized_prefixes_are_refused_before_their_bytes(control, datagram):
    with pytest.raises(WireError) as error:
        StreamDecoder().feed(struct.pack("!H", control) + b"\x01")
    assert error.value.code == wire.ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(WireError) as error:
        StreamDecoder().feed(struct.pack("!H", datagram) + bytes([RELAY_DATA]))
    assert error.value.code == wire.ErrorCode.FRAME_TOO_LARGE


def test_empty_and_headless_items_are_malformed():
    with pytest.raises(WireError):
        StreamDecoder().feed(b"\x00\x00")
    with pytest.raises(WireError):
        StreamDecoder().feed(struct.pack("!H", RELAY_HEADER_SIZE) + bytes([RELAY_DATA]) + b"\x00" * 8)
    with pytest.raises(ValueError):
        encode_datagram(b"\x01" * 20)
