"""aclose() right after write_eof(): the peer gets the stream's end (its FIN) before the
connection's, on either stack. The FIN used to wait for the next transmit while aclose() saw
nothing unacknowledged and closed at once: the stream then ended with the connection, and a
peer that checks why it ended (a clean end, or a lost connection?) could not tell."""

from __future__ import annotations

import asyncio

import pytest
from aioquic.quic import events

from discretpeer import Identity
from discretpeer.tuning import Tuning
from tests.conftest import beacon_entry
from tests.support.peers import connect_both, loopback_peer


@pytest.mark.parametrize("size", [0, 1, 50_000])
@pytest.mark.parametrize("stack", ["qh3", "aioquic"])
async def test_the_stream_end_arrives_before_the_close(beacon, stack, size):
    ia, ib = Identity.generate(), Identity.generate()
    entry = [beacon_entry(beacon)]
    tuning = Tuning(quic_stack=stack)
    async with loopback_peer(ia, entry, tuning=tuning) as pa, loopback_peer(ib, entry, tuning=tuning) as pb:
        ca, cb = await connect_both(pa, pb)
        seen: list[events.QuicEvent] = []  # what cb's connection reported, in order
        protocol = cb._protocol
        original = protocol.quic_event_received

        def record(event: events.QuicEvent) -> None:
            seen.append(event)
            original(event)

        protocol.quic_event_received = record  # type: ignore[method-assign]  # the test's recorder
        _, writer = await ca.open_stream()
        stream_id = writer.get_extra_info("stream_id")
        writer.write(b"x" * size)
        writer.write_eof()
        await ca.aclose("done")  # at once: the stream's end is written, not yet sent
        await asyncio.wait_for(cb.wait_closed(), 5)
        assert cb.close_reason == "done"
        ours = [e for e in seen if isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id]
        assert sum(len(e.data) for e in ours) == size
        fins = [i for i, e in enumerate(seen) if isinstance(e, events.StreamDataReceived) and e.end_stream]
        closes = [i for i, e in enumerate(seen) if isinstance(e, events.ConnectionTerminated)]
        assert ours and ours[-1].end_stream, "the stream ended with the connection, not with its FIN"
        assert len(closes) == 1 and fins[-1] < closes[0], (fins, closes)
