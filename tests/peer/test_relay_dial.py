"""A dial through the relay that fails must leave the pair free to dial again (issue 13's bug:
the failure handler itself raised for a relay dial and left the pair "dialing" for good)."""

from __future__ import annotations

import asyncio

from discretpeer import ConnectError, Identity
from tests.conftest import beacon_entry
from tests.support.peers import carried, connect_both, loopback_peer


async def test_a_failed_relay_dial_leaves_the_pair_free_to_dial_again(beacon):
    """Relay only. The first attempt reaches the other peer through the relay, then fails its
    identity check (each side expects a stranger), so the dialer's relayed dial fails. The app
    retries with the right expectation: the same pair (same meeting, same instances) must dial
    through the relay again and connect."""
    ia, ib, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    entries = [beacon_entry(beacon)]
    # a short punch session: the retry counts as a new attempt of the known pair
    async with (
        loopback_peer(ia, entries, direct=False, punch_duration=0.5) as pa,
        loopback_peer(ib, entries, direct=False, punch_duration=0.5) as pb,
    ):
        results = await asyncio.gather(
            pa.connect("retry", expect=stranger.peer_id, timeout=2),
            pb.connect("retry", expect=stranger.peer_id, timeout=2),
            return_exceptions=True,
        )
        assert all(isinstance(result, ConnectError) for result in results), results
        assert pa.stats.dials + pb.stats.dials == 1  # exactly one side dialed, through the relay
        assert pa.stats.auth_failures + pb.stats.auth_failures >= 1
        dialer = pa if pa.stats.dials else pb
        ca, cb = await connect_both(pa, pb, meeting="retry", timeout=5)
        assert ca.path == cb.path == "relay"
        assert dialer.stats.dials == 2
        assert await carried(ca, cb, b"after the retry") == b"after the retry"


async def test_a_peer_refused_through_the_relay_is_told_it_was_refused(beacon):
    """D waits for B only; C knows the meeting. Whichever of C and D dials (through the relay),
    C learns that D refused it: the refusal is sent before the connection closes, not lost to
    the CONNECTION_CLOSE that follows it at once (several rounds: the dialer is random)."""
    entries = [beacon_entry(beacon)]
    for attempt in range(3):
        ib, ic, idd = Identity.generate(), Identity.generate(), Identity.generate()
        async with loopback_peer(idd, entries, direct=False) as pd, loopback_peer(ic, entries, direct=False) as pc:
            await pd.listen(f"refusal {attempt}", expect=ib.peer_id)
            try:
                await pc.connect(f"refusal {attempt}", expect=idd.peer_id, timeout=2)
            except ConnectError as exc:
                failures = exc.report["failures"]
            else:
                raise AssertionError("a stranger got a connection")
            assert pc.stats.auth_failures >= 1 and pd.stats.auth_failures >= 1
            assert failures and all("refused us" in text for text in failures), failures
