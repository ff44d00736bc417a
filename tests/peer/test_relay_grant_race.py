"""A relayed connection whose first packets reach the other peer before that peer has its grant
(the beacon grants both at once; a grant can be late, e.g. retransmitted): the frames are held and
let in at the grant, so the handshake loses nothing and the connection starts as any other
(a lost Initial would count as congestion and leave it a window of a few packets)."""

from __future__ import annotations

import asyncio

from discretpeer import Identity
from discretpeer.proto.wire import RelayGrant
from discretpeer.quic_stack import congestion_state
from discretpeer.tuning import Tuning
from tests.conftest import beacon_entry
from tests.support.peers import carried, loopback_peer

GRANT_LATE = 0.4  # seconds: longer than the other peer takes to dial through its own grant
QH3 = Tuning(quic_stack="qh3")  # the default, named: its core counts probe timeouts and losses


async def test_frames_ahead_of_the_grant_are_held_and_the_handshake_loses_nothing(beacon):
    ia, ib = Identity.generate(), Identity.generate()
    entry = [beacon_entry(beacon)]
    async with (
        loopback_peer(ia, entry, direct=False, tuning=QH3) as pa,
        loopback_peer(ib, entry, direct=False, tuning=QH3) as pb,
    ):
        # the dialer (the lower instance value) dials through its grant; the other reads its own late
        dialer, listener = (pa, pb) if pa.instance < pb.instance else (pb, pa)
        relay = listener._driver.relay
        on_message = relay.on_message
        loop = asyncio.get_running_loop()

        def late_grant(client, message) -> None:
            if isinstance(message, RelayGrant):
                loop.call_later(GRANT_LATE, on_message, client, message)
            else:
                on_message(client, message)

        relay.on_message = late_grant  # type: ignore[method-assign]  # the listener reads its grant late
        ca, cb = await asyncio.wait_for(
            asyncio.gather(
                pa.connect("late grant", expect=ib.peer_id, timeout=10),
                pb.connect("late grant", expect=ia.peer_id, timeout=10),
            ),
            15,
        )
        assert ca.path == cb.path == "relay"
        assert listener.stats.relay_frames_early >= 1 and listener.stats.relay_frames_replayed >= 1
        assert dialer.stats.dials == 1 and listener.stats.dials == 0
        payload = bytes(range(256)) * 4096
        assert await asyncio.wait_for(carried(ca, cb, payload), 20) == payload
        for connection in (ca, cb):
            state = congestion_state(connection._protocol._quic)
            # no probe timeout (the dialer's Initial got through the first time: a dropped one
            # cost ~0.3 s here, measured, and 1 s on a path of unknown RTT), and no loss: without
            # the hold the dialer counted its first two packets lost, and qh3's CUBIC left it a
            # window of 11-52 KB after this 1 MB (measured), the NAT lab's slow relayed rows
            assert state["pto_total"] == 0 and state["loss_total"] == 0, (connection, state)
