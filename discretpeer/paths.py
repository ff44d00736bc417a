"""Routes behind peer connections (sans-I/O).

A peer connection's QUIC state is bound to a *virtual* address that never changes; a
:class:`Route` maps it to how packets really travel now: straight to the peer's address, or
wrapped in relay frames to a beacon. Switching the route (relay → direct when a punch succeeds,
or to a new port when the peer's NAT rebinds) is invisible to QUIC, so streams survive it.
We only switch to an address that our authenticated probes confirmed: a packet from a new address
alone never redirects our traffic.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from discretpeer.addresses import Addr
from discretpeer.proto.relay_frame import relay_frame_header

RouteKind = Literal["direct", "relay"]

_VIRTUAL_HOST = "discretpeer-path"


@dataclass(frozen=True)
class RelayLink:
    session_id: bytes
    beacon: Addr


@dataclass
class Route:
    virtual: Addr
    direct: Addr | None = None
    relay: RelayLink | None = None
    kind: RouteKind = "direct"
    switches: list[tuple[RouteKind, Addr]] = field(default_factory=list)
    bytes_relayed: int = 0

    def wrap(self, data: bytes) -> tuple[bytes, Addr] | None:
        """What to put on the wire for a QUIC datagram, and where; None if there is no route."""
        framing = self.framing()
        if framing is None:
            return None
        header, addr = framing
        if header:
            self.bytes_relayed += len(data)
            return header + data, addr
        return data, addr

    def framing(self) -> tuple[bytes, Addr] | None:
        """What :meth:`wrap` puts in front of every datagram and where it sends them: nothing and
        the direct address, a relay frame's header and the beacon, or None (no route). A sender's
        run of datagrams to one route needs one look-up (and counts relayed bytes itself)."""
        if self.kind == "relay" and self.relay is not None:
            return relay_frame_header(self.relay.session_id), self.relay.beacon
        if self.direct is not None:
            return b"", self.direct
        return None

    @property
    def real(self) -> Addr | None:
        """The address packets currently go to (the beacon's when relayed)."""
        if self.kind == "relay" and self.relay is not None:
            return self.relay.beacon
        return self.direct

    def use_direct(self, address: Addr) -> bool:
        """Send straight to ``address`` from now on. Returns True if anything changed."""
        if self.kind == "direct" and self.direct == address:
            return False
        self.direct = address
        self.kind = "direct"
        self.switches.append(("direct", address))
        return True

    def use_relay(self, link: RelayLink) -> bool:
        if self.kind == "relay" and self.relay == link:
            return False
        self.relay = link
        self.kind = "relay"
        self.switches.append(("relay", link.beacon))
        return True


class RouteTable:
    """Virtual address → route, and direct address → route (to find a connection's route)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.by_virtual: dict[Addr, Route] = {}

    def new(self, *, direct: Addr | None = None, relay: RelayLink | None = None) -> Route:
        virtual = (_VIRTUAL_HOST, next(self._counter))
        route = Route(virtual=virtual, direct=direct, relay=relay, kind="relay" if relay and not direct else "direct")
        self.by_virtual[virtual] = route
        return route

    def get(self, virtual: Addr) -> Route | None:
        return self.by_virtual.get(virtual)

    def keep(self, route: Route) -> None:
        """Register ``route`` again: a relay route outlives the connections that travelled on it
        (a pair dials again through the same relay session after a failed attempt)."""
        self.by_virtual[route.virtual] = route

    def drop(self, route: Route) -> None:
        self.by_virtual.pop(route.virtual, None)

    def __len__(self) -> int:
        return len(self.by_virtual)


def is_virtual(addr: tuple) -> bool:
    return bool(addr) and addr[0] == _VIRTUAL_HOST
