"""A stream's writer pauses on unacknowledged bytes above marks that follow the congestion
window (issue 18: fixed 1 MiB marks held one stream to ~6 MB/s at 83 ms RTT with no loss)."""

from __future__ import annotations

import asyncio

from discretpeer._aioquic import congestion_window
from discretpeer.connection import PeerProtocol
from discretpeer.dialer import peer_quic_configuration
from discretpeer.flow import AppPacedQuicConnection, stream_water_marks
from discretpeer.tuning import Tuning

MIB = 1024 * 1024


def test_the_tuning_marks_hold_while_the_window_is_small() -> None:
    assert stream_water_marks(100_000, MIB, MIB // 4, 16 * MIB) == (MIB, MIB // 4)


def test_the_marks_follow_the_window_high_at_twice_low_at_once() -> None:
    assert stream_water_marks(3 * MIB, MIB, MIB // 4, 16 * MIB) == (6 * MIB, 3 * MIB)


def test_the_ceiling_bounds_both_marks() -> None:
    assert stream_water_marks(100 * MIB, MIB, MIB // 4, 16 * MIB) == (16 * MIB, 8 * MIB)


def test_a_writer_pauses_only_above_twice_the_congestion_window() -> None:
    """Real connection and protocol (no network needed: written data is unacknowledged until
    the peer acknowledges it). With a 4 KiB tuning mark and aioquic's initial window of ten
    datagrams, the writer keeps going up to twice that window, then pauses."""
    tuning = Tuning(stream_high_water=4096, stream_low_water=1024)
    quic = AppPacedQuicConnection(configuration=peer_quic_configuration(is_client=True, tuning=tuning))
    window = congestion_window(quic)
    assert window > 4096

    async def scenario() -> tuple[bool, bool, int]:
        protocol = PeerProtocol(quic)
        _, writer = protocol.make_stream(quic.get_next_available_stream_id())
        adapter = writer.transport
        writer.write(b"x" * (2 * window - 1))
        paused_below = adapter.paused
        writer.write(b"x" * 2)
        return paused_below, adapter.paused, protocol.water_marks()[0]

    paused_below, paused_above, high = asyncio.run(scenario())
    assert high == 2 * window
    assert not paused_below
    assert paused_above
