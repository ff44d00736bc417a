"""STUN Binding answers: the codec (hypothesis) and the beacon's UDP port (real sockets, real Chromium)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import zlib

from hypothesis import given
from hypothesis import strategies as st

from beacon.stun import MAGIC_COOKIE, StunResponder, binding_response, is_stun, parse_binding_request

from .chromium import Chromium


def request(transaction: bytes, attributes: bytes = b"") -> bytes:
    return struct.pack("!HHI12s", 1, len(attributes), MAGIC_COOKIE, transaction) + attributes


def decode_mapped(response: bytes) -> tuple[bytes, str, int]:
    kind, length, cookie, transaction = struct.unpack_from("!HHI12s", response)
    assert kind == 0x0101 and cookie == MAGIC_COOKIE and length == len(response) - 20
    attr, size, _, family, xport = struct.unpack_from("!HHBBH", response, 20)
    assert attr == 0x0020
    raw = response[28 : 24 + size]
    mask = MAGIC_COOKIE.to_bytes(4, "big") + (transaction if family == 2 else b"")
    ip = ipaddress.ip_address(bytes(a ^ b for a, b in zip(raw, mask, strict=False)))
    fp_attr, fp_size, crc = struct.unpack_from("!HHI", response, len(response) - 8)
    assert fp_attr == 0x8028 and fp_size == 4
    assert crc == (zlib.crc32(response[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    return transaction, str(ip), xport ^ (MAGIC_COOKIE >> 16)


@given(st.binary(min_size=12, max_size=12), st.ip_addresses(), st.integers(0, 65535))
def test_response_round_trips(transaction: bytes, ip: object, port: int) -> None:
    response = binding_response(transaction, str(ip), port)
    assert decode_mapped(response) == (transaction, str(ip), port)
    assert is_stun(response) and response[0] < 0x40
    assert len(response) <= 2.6 * 20  # under QUIC's 3x anti-amplification rule


@given(st.binary(max_size=200))
def test_junk_is_never_answered_and_never_crashes(data: bytes) -> None:
    transaction = parse_binding_request(data)
    if transaction is not None:
        assert data[:2] == b"\x00\x01" and len(transaction) == 12


@given(st.binary(min_size=12, max_size=12), st.lists(st.binary(max_size=40), max_size=4))
def test_requests_with_attributes_parse(transaction: bytes, values: list[bytes]) -> None:
    attributes = b"".join(struct.pack("!HH", 0x8022, len(v)) + v + b"\0" * (-len(v) % 4) for v in values)
    assert parse_binding_request(request(transaction, attributes)) == transaction
    assert parse_binding_request(request(transaction, attributes)[:-1]) is None


def test_quic_packets_are_not_stun() -> None:
    for first in range(0x40, 0x100):
        assert not is_stun(bytes([first]) + b"\0\0\0" + MAGIC_COOKIE.to_bytes(4, "big") + b"\0" * 12)


def test_rate_limit_bounds_answers() -> None:
    responder = StunResponder(rate=10, burst=5)
    answers = [responder.answer(request(os.urandom(12)), ("192.0.2.1", 1), now=100.0) for _ in range(20)]
    assert sum(a is not None for a in answers) == 5 and responder.dropped == 15


async def test_beacon_answers_stun_on_its_quic_port(beacon) -> None:
    host, port = beacon.addresses[0]
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        transaction = os.urandom(12)
        await loop.sock_sendto(sock, request(transaction), (host, port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
        assert decode_mapped(data) == (transaction, "127.0.0.1", sock.getsockname()[1])
    assert beacon.stun.answered == 1


async def test_chromium_gathers_a_server_reflexive_candidate_from_the_beacon(beacon) -> None:
    host, port = beacon.addresses[0]
    chrome = Chromium()
    try:
        await chrome.start()
        found = await chrome.eval(
            "(async () => { const pc = new RTCPeerConnection({iceServers: [{urls: "
            f"'stun:{host}:{port}'}}]}}); pc.createDataChannel('x'); "
            "const types = []; pc.onicecandidate = e => { if (e.candidate) types.push(e.candidate.type); }; "
            "await pc.setLocalDescription(await pc.createOffer()); "
            "await new Promise(r => { const t = () => pc.iceGatheringState === 'complete' ? r() "
            ": setTimeout(t, 20); t(); });"
            "return types; })()"
        )
    finally:
        await chrome.close()
    assert "srflx" in found  # Chromium accepted the beacon's answer (XOR-MAPPED-ADDRESS, FINGERPRINT)
    assert beacon.stun.answered >= 1
