"""A beacon process killed with SIGKILL: clients notice within seconds and peers meet again.

The beacon runs as ``python -m beacon --dir D`` (as in production) and is restarted in the same
directory (same ``cert_der.bin``) on the same port. The restarted process knows none of the old
connections; it answers their next packet with a QUIC stateless reset whose token it derives
from its key and the connection ID, so clients reconnect at once instead of after QUIC's 60 s
idle timeout. Without a restart, clients declare the beacon lost after missed Pongs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from discretpeer import Peer
from tests.peer.beacon_process import BeaconProcess, loopback_peer
from tests.peer.beacon_process import beacon_process as shared_beacon_process
from tests.support.peers import carried, connect_both

GOAL = 10.0  # seconds: waiting peers meet again after kill -9 + restart (issue 12)
# a waiting client is silent between two keepalive Pings (at most 8 s), then 3 Pings go unanswered
# (1 s each): the longest it may take to declare a dead beacon lost
NOTICE_BOUND = 13.0


@asynccontextmanager
async def beacon_process(tmp_path: Path) -> AsyncIterator[BeaconProcess]:
    async with shared_beacon_process(tmp_path / "beacon", "--loop", "asyncio") as beacon:
        yield beacon


async def until(predicate, timeout: float, what: str) -> float:
    """Wait until ``predicate()``; return the loop time it became true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"not within {timeout:.1f} s: {what}"
        await asyncio.sleep(0.01)
    return loop.time()


def connects(peer: Peer) -> int:
    return peer.beacon_status[0].connects


def connected(peer: Peer) -> bool:
    return peer.beacon_status[0].state == "connected"


async def test_waiting_peers_meet_again_quickly_after_kill_and_restart(tmp_path):
    async with beacon_process(tmp_path) as beacon, loopback_peer(beacon) as pa, loopback_peer(beacon) as pb:
        await pa.listen("crash meeting", expect=pb.peer_id)
        await pb.listen("another meeting", expect=None)  # B waits too, elsewhere
        await until(lambda: connected(pa) and connected(pb), 10, "both peers on the beacon")
        before_a, before_b = connects(pa), connects(pb)
        await asyncio.sleep(1.0)  # let the keepalives settle into their rhythm

        await beacon.kill()
        restarted = await beacon.start()
        # B wants to meet A now: its Announce goes to the new process on the old connection,
        # which answers with a stateless reset: B reconnects at once
        meeting = asyncio.ensure_future(pb.connect("crash meeting", expect=pa.peer_id, timeout=GOAL + 5))
        b_back = await until(lambda: connects(pb) > before_b, 3, "B reconnected after the reset")
        conn = await meeting
        met = asyncio.get_running_loop().time()
        a_back = await until(lambda: connects(pa) > before_a, 1, "A reconnected")
        print(
            f"\ncrash recovery: B reconnected {b_back - restarted:.2f} s after the restart, "
            f"A {a_back - restarted:.2f} s, peers met again {met - restarted:.2f} s after it"
        )
        assert conn.peer_id == pa.peer_id
        assert met - restarted <= GOAL
        assert b_back - restarted < 2.0  # the reset, not a timeout
        for peer in (pa, pb):
            assert any("reset the connection" in h for h in peer.beacon_status[0].history)


async def test_a_dead_beacon_is_declared_lost_from_missed_pongs(tmp_path):
    async with beacon_process(tmp_path) as beacon, loopback_peer(beacon) as peer:
        await peer.listen("waiting", expect=None)
        await until(lambda: connected(peer), 10, "peer on the beacon")
        await asyncio.sleep(0.5)
        await beacon.kill()
        killed = asyncio.get_running_loop().time()
        lost = await until(lambda: not connected(peer), NOTICE_BOUND, "the dead beacon declared lost")
        status = peer.beacon_status[0]
        print(f"\ndead beacon declared lost after {lost - killed:.2f} s: {status.last_error}")
        assert "beacon lost: no answer to 3 Pings" in (status.last_error or "")


async def test_a_relayed_connection_comes_back_after_kill_and_restart(tmp_path):
    async with (
        beacon_process(tmp_path) as beacon,
        loopback_peer(beacon, direct=False) as pa,
        loopback_peer(beacon, direct=False) as pb,
    ):
        ca, cb = await connect_both(pa, pb, "relayed")
        assert ca.path == cb.path == "relay"
        before_a, before_b = connects(pa), connects(pb)
        await asyncio.sleep(1.0)

        await beacon.kill()
        restarted = await beacon.start()
        # the relayed connection goes quiet: its peers ask their beacon client to check at
        # once, the restarted beacon resets them, the relay is declared lost, and the
        # application (as one with a long-lived link does) connects again
        await asyncio.wait_for(asyncio.gather(ca.wait_closed(), cb.wait_closed()), GOAL + 5)
        closed = asyncio.get_running_loop().time()
        back = await until(lambda: connects(pa) > before_a and connects(pb) > before_b, 3, "both beacon clients back")
        ca, cb = await connect_both(pa, pb, "relayed", GOAL + 5)
        relayed = asyncio.get_running_loop().time()
        print(
            f"\nrelayed connection: old one ended {closed - restarted:.2f} s after the restart, "
            f"both beacon clients back after {back - restarted:.2f} s, "
            f"new relayed connection after {relayed - restarted:.2f} s"
        )
        assert ca.path == cb.path == "relay"
        assert await carried(ca, cb, b"still here") == b"still here"
        assert closed - restarted <= 3.5  # the quiet relay had the beacon checked, not 6-8 s later
        assert relayed - back <= 1.0  # a fresh relay request at once, not RELAY_REQUEST_RETRY later
        assert relayed - restarted <= GOAL
