"""discretpeer._aioquic.FusedCryptoPair: 1-RTT packets sealed and opened in one call each must be
byte for byte what aioquic's layered CryptoPair makes and accepts, with every cipher suite and
packet-number length, across key updates, and refuse what aioquic refuses."""

from __future__ import annotations

import pytest
from aioquic import tls
from aioquic._crypto import CryptoError
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicProtocolVersion
from hypothesis import given, settings
from hypothesis import strategies as st

from discretpeer._aioquic import FusedCryptoPair

SUITES = [
    tls.CipherSuite.AES_128_GCM_SHA256,
    tls.CipherSuite.AES_256_GCM_SHA384,
    tls.CipherSuite.CHACHA20_POLY1305_SHA256,
]
SECRET_A, SECRET_B = bytes(range(48)), bytes(range(48, 96))


def _pair(cls: type[CryptoPair], suite: tls.CipherSuite, send: bytes, recv: bytes) -> CryptoPair:
    pair = cls()
    version = QuicProtocolVersion.VERSION_1
    pair.send.setup(cipher_suite=suite, secret=send, version=version)
    pair.recv.setup(cipher_suite=suite, secret=recv, version=version)
    return pair


def _short_header(pn_length: int, packet_number: int, key_phase: int = 0) -> bytes:
    first = 0x40 | (key_phase << 2) | (pn_length - 1)
    return bytes([first]) + b"\x11" * 8 + (packet_number & ((1 << (8 * pn_length)) - 1)).to_bytes(pn_length, "big")


@settings(max_examples=150, deadline=None)
@given(
    suite=st.sampled_from(SUITES),
    pn_length=st.integers(1, 4),
    packet_number=st.integers(0, 2**20),
    payload=st.binary(min_size=20, max_size=1400),
)
def test_same_bytes_as_aioquic_both_ways(
    suite: tls.CipherSuite, pn_length: int, packet_number: int, payload: bytes
) -> None:
    header = _short_header(pn_length, packet_number)
    aioquic_a, fused_a = _pair(CryptoPair, suite, SECRET_A, SECRET_B), _pair(FusedCryptoPair, suite, SECRET_A, SECRET_B)
    sealed = fused_a.encrypt_packet(header, payload, packet_number)
    assert sealed == aioquic_a.encrypt_packet(header, payload, packet_number)
    # the other side, both kinds, opens it to the same header, payload and packet number
    expected = max(0, packet_number - 3)
    fused_b = _pair(FusedCryptoPair, suite, SECRET_B, SECRET_A)
    aioquic_b = _pair(CryptoPair, suite, SECRET_B, SECRET_A)
    opened = fused_b.decrypt_packet(sealed, 9, expected)
    assert opened == aioquic_b.decrypt_packet(sealed, 9, expected) == (header, payload, packet_number)


@pytest.mark.parametrize("suite", SUITES)
def test_a_key_update_on_either_side_is_followed(suite: tls.CipherSuite) -> None:
    a = _pair(FusedCryptoPair, suite, SECRET_A, SECRET_B)
    b = _pair(FusedCryptoPair, suite, SECRET_B, SECRET_A)
    for number in range(3):
        assert (
            b.decrypt_packet(a.encrypt_packet(_short_header(2, number), b"x" * 40, number), 9, number)[1] == b"x" * 40
        )
    a.update_key()  # the next packet goes in key phase 1; b must follow it
    header = _short_header(2, 3, key_phase=1)
    assert b.decrypt_packet(a.encrypt_packet(header, b"y" * 40, 3), 9, 3) == (header, b"y" * 40, 3)
    assert b.recv.key_phase == b.send.key_phase == 1
    header = _short_header(2, 4, key_phase=1)
    assert a.decrypt_packet(b.encrypt_packet(header, b"z" * 40, 4), 9, 4) == (header, b"z" * 40, 4)


def test_a_damaged_or_short_packet_is_refused_as_aioquic_refuses_it() -> None:
    a = _pair(FusedCryptoPair, SUITES[0], SECRET_A, SECRET_B)
    b = _pair(FusedCryptoPair, SUITES[0], SECRET_B, SECRET_A)
    sealed = bytearray(a.encrypt_packet(_short_header(2, 7), b"p" * 100, 7))
    sealed[-1] ^= 1
    with pytest.raises(CryptoError):
        b.decrypt_packet(bytes(sealed), 9, 7)
    with pytest.raises(CryptoError, match="too short"):
        b.decrypt_packet(bytes(sealed[:20]), 9, 7)


def test_without_keys_it_fails_like_aioquic() -> None:
    from aioquic.quic.crypto import KeyUnavailableError

    with pytest.raises(KeyUnavailableError):
        FusedCryptoPair().decrypt_packet(b"\x40" + bytes(40), 9, 0)
