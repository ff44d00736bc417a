"""Which address is our gateway: the default route's next hop, else any route's next hop."""

from __future__ import annotations

import ipaddress


def default_gateway(route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 gateway of the default route (Linux ``/proc/net/route``); with no default route
    (a lab, a network with only specific routes), the first gateway of any route. None if none."""
    try:
        with open(route_table, encoding="ascii", errors="replace") as f:
            lines = f.read(65536).splitlines()[1:]
    except OSError:
        return None
    return parse_route_table(lines)


def parse_route_table(lines: list[str]) -> str | None:
    fallback = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        if not flags & 0x2 or gateway == 0:  # RTF_GATEWAY
            continue
        address = str(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))  # the kernel writes it little-endian
        if destination == 0 and mask == 0:
            return address
        fallback = fallback or address
    return fallback
