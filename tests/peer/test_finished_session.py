"""A listener whose peer came, talked and left asks nobody for anything afterwards (real beacon)."""

from __future__ import annotations

import asyncio

from discretpeer import Identity, Peer
from tests.conftest import beacon_entry


async def test_no_relay_request_or_dial_for_a_peer_that_left(beacon):
    """The bug: the pair of a closed connection kept asking the beacon to relay (every 5 s until
    the pair expired, ~7 requests) to a peer that had gone. The same peers meeting again is a new
    attempt: measured from the new introduction, direct, no relay asked for."""
    ia, ib = Identity.generate(), Identity.generate()
    entry = beacon_entry(beacon)
    async with Peer(ia, [entry], host="127.0.0.1", relay_after=0.3) as listener:
        await listener.listen_for_peers([ib.peer_id])
        async with Peer(ib, [entry], host="127.0.0.1", relay_after=0.3) as visitor:
            conn = await visitor.connect_to_peer(ia.peer_id, timeout=10)
            incoming = await asyncio.wait_for(anext(listener.incoming()), 5)
            assert conn.path == incoming.path == "direct"
            await conn.aclose("done")
            await asyncio.wait_for(incoming.wait_closed(), 5)
            dials = listener.stats.dials + visitor.stats.dials
            await asyncio.sleep(1.5)  # five times relay_after
            assert listener.stats.relay_requests == visitor.stats.relay_requests == 0
            assert listener.stats.dials + visitor.stats.dials == dials
            again = await visitor.connect_to_peer(ia.peer_id, timeout=10)  # same instance, same pair
            assert again.path == "direct"
            assert again.time_to_connect is not None and again.time_to_connect < 1.0, again.time_to_connect
            await asyncio.wait_for(anext(listener.incoming()), 5)
            await asyncio.sleep(0.6)
            assert listener.stats.relay_requests == visitor.stats.relay_requests == 0
