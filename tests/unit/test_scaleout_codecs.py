"""Property tests for the scale-out codecs: relay link datagrams, the Redis store's address text,
the reuseport steering program and steered connection IDs (no sockets)."""

from __future__ import annotations

import ipaddress
import os
import struct

from hypothesis import given
from hypothesis import strategies as st

from beacon.relay_link import HEADER_SIZE, seal, unseal
from beacon.store_redis import _decode_address, _decode_candidates, _encode_address, _encode_candidates
from beacon.workers import steering_program
from discretpeer.proto.wire import Address

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1)).filter(
    lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None
)
hosts = st.one_of(ipv4, ipv6)
ports = st.integers(1, 65535)
keys = st.binary(min_size=32, max_size=32)


@given(keys, hosts, ports, st.binary(min_size=1, max_size=2000))
def test_link_roundtrip(key, host, port, data):
    sealed = seal(key, (host, port), data)
    assert len(sealed) == HEADER_SIZE + len(data)
    assert unseal(key, sealed) == ((host, port), data)


@given(keys, keys, hosts, ports, st.binary(min_size=1, max_size=200), st.data())
def test_link_rejects_other_keys_and_any_flipped_bit(key, other, host, port, data, draw):
    sealed = seal(key, (host, port), data)
    if other != key:
        assert unseal(other, sealed) is None
    index = draw.draw(st.integers(0, len(sealed) - 1))
    bit = draw.draw(st.integers(0, 7))
    tampered = sealed[:index] + bytes([sealed[index] ^ (1 << bit)]) + sealed[index + 1 :]
    assert unseal(key, tampered) is None


@given(keys, st.binary(max_size=300))
def test_link_never_raises_on_junk(key, junk):
    assert unseal(key, junk) is None or len(junk) > HEADER_SIZE


@given(hosts, ports, st.lists(st.tuples(hosts, ports), max_size=8))
def test_store_address_text_roundtrip(host, port, candidates):
    address = Address(host, port)
    assert _decode_address(_encode_address(address)) == address
    listed = tuple(Address(h, p) for h, p in candidates)
    assert _decode_candidates(_encode_candidates(listed)) == listed
    assert _decode_candidates(_encode_candidates(listed).encode()) == listed


def _run_cbpf(program: bytes, data: bytes) -> int:
    """A tiny interpreter of the instructions steering_program uses (what the kernel runs)."""
    code = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, a = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x30:  # ld b [k]
            if k >= len(data):
                return 0  # the kernel aborts the program: no steering (hash)
            a = data[k]
        elif op == 0x45:  # jset #k
            pc += jt if a & k else jf
        elif op == 0x35:  # jge #k
            pc += jt if a >= k else jf
        elif op == 0x16:
            return a
        elif op == 0x06:
            return k
        pc += 1


@given(st.integers(1, 255), st.binary(min_size=2, max_size=64))
def test_steering_program(workers, datagram):
    result = _run_cbpf(steering_program(workers), datagram)
    if datagram[0] & 0x80:  # long header (handshake): the kernel's hash
        assert result == 0xFFFFFFFF
    elif datagram[1] < workers:  # short header / relay: the worker named by the ID's first byte
        assert result == datagram[1]
    else:
        assert result == 0xFFFFFFFF


def test_steered_connection_ids_start_with_the_worker_index():
    import os

    from aioquic.quic.configuration import QuicConfiguration

    from beacon.quic_tuning import BeaconQuicConnection
    from beacon.workers import steered_connection_class
    from certs import create_bundle

    bundle = create_bundle()
    configuration = QuicConfiguration(
        is_client=False, certificate=bundle.certificate, private_key=bundle.private_key, alpn_protocols=["x"]
    )
    for index in (0, 1, 7, 255):
        connection = steered_connection_class(BeaconQuicConnection, index)(
            configuration=configuration, original_destination_connection_id=os.urandom(8)
        )
        assert connection.host_cid[0] == index
        assert connection._local_initial_source_connection_id == connection.host_cid
        connection._remote_active_connection_id_limit = 8
        connection._replenish_connection_ids()
        assert len(connection._host_cids) == 8
        assert all(cid.cid[0] == index and len(cid.cid) == 8 for cid in connection._host_cids)
        assert len({cid.cid for cid in connection._host_cids}) == 8


def test_ids_issued_after_the_handshake_are_steered_and_carry_derived_reset_tokens() -> None:
    """The beacon's trimmed connections replace aioquic's replenish (beacon.quic_tuning): the IDs
    it issues later must still carry the worker's index, and their reset tokens must be derived
    from the steered ID (a restarted worker answers for exactly those)."""
    from aioquic.quic.configuration import QuicConfiguration

    from beacon import quic_tuning
    from beacon.quic_tuning import BeaconQuicConnection
    from beacon.workers import steered_connection_class
    from certs import create_bundle
    from discretpeer import stateless_reset

    bundle = create_bundle()
    token_for = stateless_reset.token_function(stateless_reset.reset_key(bundle.private_key.private_bytes_raw()))
    configuration = QuicConfiguration(
        is_client=False, certificate=bundle.certificate, private_key=bundle.private_key, alpn_protocols=["x"]
    )
    for index in (0, 3, 200):
        connection = steered_connection_class(BeaconQuicConnection, index)(
            configuration=configuration, original_destination_connection_id=os.urandom(8)
        )
        quic_tuning.prepare_server_connection(connection)
        quic_tuning.derive_reset_tokens(connection, token_for)
        connection._remote_active_connection_id_limit = 8
        connection._replenish_connection_ids()
        assert len(connection._host_cids) > 1
        for cid in connection._host_cids:
            assert cid.cid[0] == index
            assert cid.stateless_reset_token == token_for(cid.cid)
