"""PCP and NAT-PMP codecs: round trips, RFC byte layouts, and no exception but their own on garbage."""

from __future__ import annotations

import contextlib
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from discretpeer.portmap import natpmp, pcp
from discretpeer.portmap.gateway import parse_route_table

ports = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)
ipv4 = st.ip_addresses(v=4).map(str)
any_ip = st.one_of(ipv4, st.ip_addresses(v=6).map(str).filter(lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None))


@given(st.binary(min_size=12, max_size=12), ipv4, ports, u32, ports, any_ip)
def test_pcp_request_round_trip(nonce: bytes, client: str, port: int, lifetime: int, suggested: int, ip: str) -> None:
    request = pcp.MapRequest(nonce, client, port, lifetime, suggested, ip)
    data = request.encode()
    assert len(data) == 60 and data[0] == 2 and data[1] == 1
    # RFC 6887 §7.1: the client's IPv4 address as an IPv4-mapped IPv6 address at bytes 8..24
    assert data[8:24] == b"\x00" * 10 + b"\xff\xff" + ipaddress.IPv4Address(client).packed
    assert pcp.MapRequest.decode(data) == request


@given(st.integers(0, 255), u32, u32, st.binary(min_size=12, max_size=12), ports, ports, any_ip)
def test_pcp_response_round_trip(
    result: int, lifetime: int, epoch: int, nonce: bytes, internal: int, external: int, ip: str
) -> None:
    response = pcp.MapResponse(result, lifetime, epoch, nonce, internal, external, ip)
    data = response.encode()
    assert len(data) == 60 and data[1] == 0x81 and data[3] == result
    assert pcp.MapResponse.decode(data) == response


@given(st.binary(max_size=1200))
def test_pcp_garbage_raises_only_pcp_error(data: bytes) -> None:
    try:
        answer = pcp.MapResponse.decode(data)
    except pcp.PcpError:
        return
    assert answer.result == data[3]


def test_pcp_error_without_body_and_wrong_protocol() -> None:
    short = pcp.MapResponse(2, 0, 5, b"n" * 12, 1, 1, "1.2.3.4").encode()[:24]
    assert pcp.MapResponse.decode(short).result_name == "NOT_AUTHORIZED"
    ok = bytearray(pcp.MapResponse(0, 60, 5, b"n" * 12, 1, 1, "1.2.3.4").encode())
    ok[36] = 6  # TCP
    try:
        pcp.MapResponse.decode(bytes(ok))
    except pcp.PcpError as exc:
        assert "protocol 6" in str(exc)
    else:
        raise AssertionError("a TCP mapping was accepted")


@given(ports, ports, u32)
def test_natpmp_map_request_layout(internal: int, suggested: int, lifetime: int) -> None:
    data = natpmp.map_request(internal, suggested, lifetime)
    assert len(data) == 12 and data[:4] == b"\x00\x01\x00\x00"
    assert int.from_bytes(data[4:6], "big") == internal and int.from_bytes(data[8:12], "big") == lifetime


@given(st.integers(0, 65535), u32, ports, ports, u32, ipv4)
def test_natpmp_responses_round_trip(
    result: int, epoch: int, internal: int, external: int, lifetime: int, ip: str
) -> None:
    mapped = natpmp.MapResponse(result, epoch, internal, external, lifetime)
    assert natpmp.decode(mapped.encode()) == mapped
    address = natpmp.AddressResponse(result, epoch, ip)
    assert natpmp.decode(address.encode()) == address


@given(st.binary(max_size=64))
def test_natpmp_garbage_raises_only_natpmp_error(data: bytes) -> None:
    with contextlib.suppress(natpmp.NatPmpError):
        natpmp.decode(data)


def test_route_table_default_then_any_gateway() -> None:
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT"
    default = "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0"
    lab = "eth0\t007100CB\t0101A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0"
    link = "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0"
    assert parse_route_table([link, default]) == "192.168.1.1"
    assert parse_route_table([link, lab]) == "192.168.1.1"  # no default route (the lab)
    assert parse_route_table([link, "garbage", header]) is None
