"""A peer's beacons: one :class:`~discretpeer.beacon_client.BeaconClient` per configured beacon,
started together on the peer's socket, told the meetings' tokens and our candidates, and the
signals they raise that concern meetings (a token refused as full) or connections (a relayed
connection gone quiet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from discretpeer.beacon_client import BeaconClient
from discretpeer.logs import get_logger

if TYPE_CHECKING:
    from discretpeer.addresses import Addr
    from discretpeer.config import BeaconSpec
    from discretpeer.connection import PeerConnection
    from discretpeer.endpoint import Endpoint
    from discretpeer.meeting_book import MeetingBook
    from discretpeer.pairs import PairDriver
    from discretpeer.proto.wire import Address

log = get_logger("discretpeer.peer")


class BeaconSet:
    """The beacon clients of one peer (``clients``: the list grows when :meth:`start` runs)."""

    def __init__(self, specs: list[BeaconSpec], book: MeetingBook) -> None:
        self.specs = specs
        self.clients: list[BeaconClient] = []
        self._book = book
        self._driver: PairDriver | None = None

    def start(
        self,
        endpoint: Endpoint,
        instance: bytes,
        driver: PairDriver,
        *,
        get_candidates: Callable[[], list[Address]],
        observe_behaviour: Callable[[Addr, float], Awaitable[Addr | None]],
    ) -> None:
        """Connect to every beacon from ``endpoint``; introductions and relay messages go to ``driver``."""
        self._driver = driver
        for spec in self.specs:
            client = BeaconClient(
                spec,
                endpoint,
                instance,
                on_introduction=driver.on_beacon_introduction,
                get_candidates=get_candidates,
                on_relay_message=driver.on_relay_message,
                on_disconnect=driver.relay.on_beacon_lost,
                on_token_full=self.on_token_full,
                observe_behaviour=observe_behaviour,
            )
            self.clients.append(client)
            client.start()

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)

    def connected(self) -> int:
        return sum(1 for client in self.clients if client.connected)

    async def wait(self, timeout: float, count: int) -> int:
        """Wait until ``count`` beacons (at most all of them) are connected; returns how many are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            connected = self.connected()
            if connected >= min(count, len(self.clients)):
                return connected
            await asyncio.sleep(0.02)
        return self.connected()

    def set_tokens(self, tokens: set[bytes]) -> None:
        for client in self.clients:
            client.set_tokens(tokens)

    def refresh_candidates(self) -> None:
        """Our candidates changed: tell the beacons."""
        for client in self.clients:
            client.refresh_candidates()

    def on_token_full(self, client: BeaconClient, token: bytes, text: str) -> None:
        """A beacon refused one of a meeting's tokens as full: the peers cannot meet there."""
        meeting = self._book.by_token(token)
        if meeting is not None:
            if text not in meeting.refusals:
                meeting.refusals.append(text)
            log.warning("meeting token refused as full", beacon=str(client.spec), reason=text)

    def on_connection_quiet(self, connection: PeerConnection) -> None:
        """A relayed connection hears nothing: if its beacon crashed, ask that beacon client to
        find out now (a restarted beacon resets it at once) rather than at its next keepalive."""
        if connection.path != "relay" or self._driver is None:
            return
        for route, pair in self._driver.relay.routes():
            if pair.connection is connection and route.relay is not None:
                for client in self.clients:
                    if client.beacon_address == route.relay.beacon:
                        client.check_now()
                return
