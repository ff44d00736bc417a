"""Socket addresses as the code passes them around, shared by the library and the beacon.

``Addr`` is a (host, port) pair with a plain IPv4 host where the socket said ``::ffff:a.b.c.d``;
``SocketAddress`` is what the OS hands back (IPv6 gives 4-tuples). ``wire.Address`` stays the
validated on-the-wire form.
"""

from __future__ import annotations

import ipaddress
from typing import Any

Addr = tuple[str, int]
SocketAddress = tuple[Any, ...]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmap_ip(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def map_ip(ip: IPAddress) -> ipaddress.IPv6Address:
    """The IPv6 form of ``ip``: an IPv4 address as ``::ffff:a.b.c.d`` (16-byte wire fields)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip


def unmap_host(host: str) -> str:
    """``unmap_ip`` on a host string; anything that is not an IPv4-mapped address comes back as is."""
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else host


def routable_ipv6(host: str) -> bool:
    """An IPv6 address another network may reach: not link-local, loopback, unique-local,
    IPv4-mapped or unspecified (home routers do not NAT IPv6, so such an address can be punched
    whatever the IPv4 NAT does)."""
    if ":" not in host:
        return False
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return False
    return not (
        ip.is_link_local
        or ip.is_loopback
        or ip.is_unspecified
        or ip.ipv4_mapped is not None
        or ip in _UNIQUE_LOCAL
        or ip.is_multicast
    )


_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
