"""An endpoint's routing table: which connection a QUIC packet's destination connection ID
belongs to, and which connections this side opened (those a stateless reset may end).

Sans-I/O: the table only maps IDs to connection objects; :class:`~discretpeer.endpoint.Endpoint`
reads :attr:`ConnectionIds.by_cid` for every packet and keeps it current from the connections'
ConnectionIdIssued / ConnectionIdRetired / ConnectionTerminated events.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar


class Routed(Protocol):
    routed_cids: set[bytes] | None
    route: Any


P = TypeVar("P", bound=Routed)


class ConnectionIds(Generic[P]):
    """Connection ID → connection. Once :meth:`close` d, nothing registers any more."""

    def __init__(self) -> None:
        self.by_cid: dict[bytes, P] = {}
        self.clients: set[P] = set()  # outgoing connections (stateless resets)
        self._closed = False

    def connections(self) -> set[P]:
        return set(self.by_cid.values())

    def register(self, cid: bytes, protocol: P) -> None:
        if not self._closed:
            self.by_cid[cid] = protocol
            if protocol.routed_cids is None:
                protocol.routed_cids = set()
            protocol.routed_cids.add(cid)

    def unregister(self, cid: bytes, protocol: P) -> None:
        if self.by_cid.get(cid) is protocol:
            del self.by_cid[cid]
        if protocol.routed_cids is not None:
            protocol.routed_cids.discard(cid)

    def forget(self, protocol: P) -> bool:
        """Drop every ID of ``protocol``; True when no other connection uses its route (a relay
        route is shared by the attempts of one pair: it goes with the last of them)."""
        for cid in protocol.routed_cids or ():
            if self.by_cid.get(cid) is protocol:
                del self.by_cid[cid]
        protocol.routed_cids = None
        self.clients.discard(protocol)
        route = protocol.route
        return route is not None and not any(other.route is route for other in self.by_cid.values())

    def close(self) -> None:
        self._closed = True
        self.by_cid.clear()
        self.clients.clear()
