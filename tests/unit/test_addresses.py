"""The one IPv4-mapped address normalisation, and the places that rely on it."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from beacon.limits import ip_key
from discretpeer.addresses import map_ip, unmap_host, unmap_ip
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


@given(st.text(max_size=40))
def test_anything_else_comes_back_as_is(host: str) -> None:
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        assert unmap_host(host) == host
    else:
        assert unmap_host(host) in (host, str(ip.ipv4_mapped))
