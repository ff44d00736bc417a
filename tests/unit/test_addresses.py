"""The one IPv4-mapped address normalisation, and the places that rely on it."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from beacon.limits import ip_key
from discretpeer.addresses import map_ip, routable_ipv6, unmap_host, unmap_ip
from discretpeer.endpoint import normalize_address
from discretpeer.proto.wire import Address

v4 = st.ip_addresses(v=4)
v6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None)


@given(v4)
def test_mapped_v4_becomes_v4(ip: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    assert unmap_ip(mapped) == ip
    assert unmap_host(str(mapped)) == str(ip)
    assert unmap_host(f"::ffff:{ip}") == str(ip)
    assert unmap_host(f"::FFFF:{ip}") == str(ip)
    assert normalize_address((f"::ffff:{ip}", 9, 0, 0)) == (str(ip), 9)
    assert Address.from_socket((f"::ffff:{ip}", 9)) == Address(str(ip), 9)
    assert ip_key(f"::ffff:{ip}") == str(ip)


@given(st.ip_addresses())
def test_map_then_unmap_is_identity(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    mapped = map_ip(ip)
    assert mapped.version == 6
    assert unmap_ip(mapped) == ip or (ip.version == 6 and ip.ipv4_mapped is not None)


@given(v4)
def test_v4_stays(ip: ipaddress.IPv4Address) -> None:
    assert unmap_ip(ip) is ip
    assert unmap_host(str(ip)) == str(ip)


@given(v6)
def test_other_v6_stays(ip: ipaddress.IPv6Address) -> None:
    assert unmap_ip(ip) is ip
    assert unmap_host(str(ip)) == str(ip)


@given(st.one_of(v6, v4.map(lambda ip: ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed))), st.integers(0, 3))
def test_the_datagram_source_normalisation_agrees_with_ipaddress(ip: ipaddress.IPv6Address, scope: int) -> None:
    """normalize_address decides by the text the kernel writes for a datagram's source
    (inet_ntop; no parse per datagram): the same answer as parsing it, for every IPv6 address,
    mapped or not, with or without a scope."""
    text = socket.inet_ntop(socket.AF_INET6, ip.packed)
    got = normalize_address((text, 4264, 0, scope))
    if ip.ipv4_mapped is not None:
        assert got == (str(ip.ipv4_mapped), 4264)
    else:
        assert got == (f"{text}%{scope}" if scope else text, 4264)
        assert ipaddress.IPv6Address(got[0].partition("%")[0]) == ip


@given(st.text(max_size=40))
def test_anything_else_comes_back_as_is(host: str) -> None:
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        assert unmap_host(host) == host
    else:
        assert unmap_host(host) in (host, str(ip.ipv4_mapped))


def test_routable_ipv6_is_what_another_network_may_reach() -> None:
    """Used to keep punching (not relay at once) when both peers have such an address, whatever
    their IPv4 NATs do."""
    for host in ("2001:db8:1::10", "2a01:4f8::1", "2001:db8::1%3"):
        assert routable_ipv6(host), host
    for host in ("fe80::1%2", "::1", "::", "fd12:3456::1", "::ffff:10.0.0.1", "ff02::1", "10.0.0.1", "bad::host::"):
        assert not routable_ipv6(host), host
