"""Local candidate addresses: this host's interface addresses, with the endpoint's port.

Reported to beacons (and mDNS) so that peers behind one NAT without hairpin can still connect.
"""

from __future__ import annotations

import ipaddress

import ifaddr

from discretpeer.proto.wire import MAX_CANDIDATES, Address


def local_addresses(*, ipv6: bool = True, include_loopback: bool = False) -> list[str]:
    """Usable unicast interface addresses: no link-local, multicast or unspecified ones.
    IPv4 first; private before public is not assumed (the peer probes them all)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                address = ipaddress.ip_address(raw)
            except ValueError:
                continue
            if address.version == 6 and not ipv6:
                continue
            if address.is_link_local or address.is_multicast or address.is_unspecified:
                continue
            if address.is_loopback and not include_loopback:
                continue
            if address not in found:
                found.append(address)
    found.sort(key=lambda a: a.version)
    return [str(a) for a in found]


def local_candidates(port: int, *, ipv6: bool = True, include_loopback: bool = False) -> list[Address]:
    return [Address(host, port) for host in local_addresses(ipv6=ipv6, include_loopback=include_loopback)][
        :MAX_CANDIDATES
    ]


def attached_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of this host's interfaces (no loopback, no link-local)."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                network = ipaddress.ip_network(f"{raw}/{ip.network_prefix}", strict=False)
            except ValueError:
                continue
            if network.is_loopback or network.is_link_local or network.prefixlen == 0:
                continue
            if network not in networks:
                networks.append(network)
    return networks


def on_attached_network(host: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return any(address.version == network.version and address in network for network in networks)


# private, shared (CGNAT), link-local and unique-local ranges: a peer reported there is on a LAN
LAN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def is_lan_address(host: str) -> bool:
    """True for addresses only reachable inside a site (RFC 1918, CGNAT, link-local, ULA)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return any(address.version == n.version and address in n for n in LAN_NETWORKS)
