"""What a :class:`~discretpeer.peer.Peer` knows of its own network: the candidates it announces
(the gateway's port mapping first, then the local addresses), the port mapper that asks the
gateway for a public port, and LAN discovery by mDNS."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from discretpeer.candidates import local_candidates
from discretpeer.endpoint import Endpoint
from discretpeer.portmap import Mapping, PortMapper
from discretpeer.portmap.pcp import PCP_PORT
from discretpeer.proto.wire import MAX_CANDIDATES, Address


class PeerNetwork:
    """Local candidates, the port mapper and LAN discovery of one peer's socket.

    ``on_candidates``: called when a port mapping was granted, changed or lost (the candidates
    were recomputed; the beacons should hear them). ``on_lan_sighting``: a peer seen by mDNS."""

    def __init__(
        self,
        instance: bytes,
        *,
        report_local: bool,
        port_mapping: bool,
        port_mapping_gateway: str | None,
        lan_interfaces: list[str] | None,
        on_candidates: Callable[[], None],
        on_lan_sighting: Callable[[Any], None],
    ) -> None:
        self._instance = instance
        self._report_local = report_local
        self._port_mapping = port_mapping
        self._port_mapping_gateway = port_mapping_gateway
        self._lan_interfaces = lan_interfaces
        self._on_candidates = on_candidates
        self._on_lan_sighting = on_lan_sighting
        self._endpoint: Endpoint | None = None
        self.candidates: list[Address] = []
        self.port_mapper: PortMapper | None = None
        self.lan: Any = None  # a LanDiscovery once started (imported only then: zeroconf)

    def started(self, endpoint: Endpoint) -> None:
        """The socket is open: compute the candidates it offers."""
        self._endpoint = endpoint
        self.candidates = self._compute_candidates()

    def refresh(self, networks_changed: bool) -> bool:
        """Periodically: recompute the candidates (after asking the gateway again at once when
        the attached networks changed: perhaps a new gateway). True when they changed."""
        if networks_changed and self.port_mapper is not None:
            self.port_mapper.refresh()
        fresh = self._compute_candidates()
        if fresh == self.candidates:
            return False
        self.candidates = fresh
        return True

    # --- port mapping -------------------------------------------------------------------------

    def start_port_mapping(self) -> None:
        """Ask the gateway for a public port (PCP, NAT-PMP, UPnP at once), unless bound to
        loopback or IPv6 only (or told which gateway, ``"ip"`` or ``"ip:port"``): the mapped
        address becomes our first candidate once granted."""
        assert self._endpoint is not None
        host = self._endpoint.local_address[0]
        given = self._port_mapping_gateway
        if not self._port_mapping:
            return
        if given is None and (host.startswith("127.") or host == "::1" or (":" in host and host != "::")):
            return
        gateway, _, port = (given or "").partition(":")
        self.port_mapper = PortMapper(
            self._endpoint.port,
            on_change=self._on_port_mapping,
            gateway=gateway or None,
            gateway_port=int(port) if port else PCP_PORT,
            protocols=("pcp", "natpmp") if port else ("pcp", "natpmp", "upnp"),
        )
        self.port_mapper.start()

    async def close_port_mapping(self) -> None:
        if self.port_mapper is not None:
            await self.port_mapper.close()  # the gateway forgets the mapping (one bounded try)

    def _on_port_mapping(self, mapping: Mapping | None) -> None:
        self.candidates = self._compute_candidates()
        self._on_candidates()

    # --- candidates ---------------------------------------------------------------------------

    def _compute_candidates(self) -> list[Address]:
        mapping = self.port_mapper.mapping if self.port_mapper is not None else None
        mapped = [Address(*mapping.external)] if mapping is not None else []
        return (mapped + [a for a in self._local_candidates() if a not in mapped])[:MAX_CANDIDATES]

    def _local_candidates(self) -> list[Address]:
        if not self._report_local or self._endpoint is None:
            return []
        ipv6 = ":" in self._endpoint.local_address[0]
        host = self._endpoint.local_address[0]
        if host not in ("::", "0.0.0.0"):
            return [Address.from_socket((host, self._endpoint.port))] if not host.startswith("127.") else []
        return local_candidates(self._endpoint.port, ipv6=ipv6)

    # --- LAN ----------------------------------------------------------------------------------

    async def start_lan(self, tokens: set[bytes]) -> None:
        from discretpeer.lan import LanDiscovery  # optional part: imports zeroconf

        assert self._endpoint is not None
        self.lan = LanDiscovery(
            port=self._endpoint.port,
            instance=self._instance,
            on_found=self._on_lan_sighting,
            interfaces=self._lan_interfaces,
        )
        await self.lan.start()
        await self.lan.set_tokens(tokens)

    async def close_lan(self) -> None:
        if self.lan is not None:
            with contextlib.suppress(Exception):
                await self.lan.close()
