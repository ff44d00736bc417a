"""A stream's writer pauses on unacknowledged bytes above marks that follow the connection's
bytes in flight (issue 18: fixed 1 MiB marks held one stream to ~6 MB/s at 83 ms RTT, no loss)."""

from __future__ import annotations

import asyncio

from discretpeer._aioquic import bytes_in_flight
from discretpeer.connection import PeerProtocol
from discretpeer.dialer import peer_quic_configuration
from discretpeer.flow import AppPacedQuicConnection, stream_water_marks
from discretpeer.tuning import Tuning

MIB = 1024 * 1024


def test_the_tuning_marks_hold_while_little_is_in_flight() -> None:
    assert stream_water_marks(100_000, MIB, MIB // 4, 16 * MIB) == (MIB, MIB // 4)


def test_nothing_in_flight_means_the_tuning_marks() -> None:
    # a reader that stops: flow control stops the flight, and the writer stops near the tuning's mark
    assert stream_water_marks(0, MIB, MIB // 4, 16 * MIB) == (MIB, MIB // 4)


def test_the_marks_follow_the_flight_high_at_twice_low_at_one_and_a_half() -> None:
    assert stream_water_marks(2 * MIB, MIB, MIB // 4, 16 * MIB) == (4 * MIB, 3 * MIB)


def test_the_ceiling_bounds_both_marks() -> None:
    assert stream_water_marks(100 * MIB, MIB, MIB // 4, 16 * MIB) == (16 * MIB, 12 * MIB)


def test_a_writer_pauses_only_above_twice_the_bytes_in_flight() -> None:
    """A real connection and protocol: the client's Initial is in flight (sent, never answered:
    no network needed), the tuning's marks are far below it, so the writer keeps going up to
    twice the flight, then pauses."""
    tuning = Tuning(stream_high_water=100, stream_low_water=50)
    quic = AppPacedQuicConnection(configuration=peer_quic_configuration(is_client=True, tuning=tuning))
    quic.connect(("127.0.0.1", 4433), now=0.0)
    assert quic.datagrams_to_send(now=0.0)
    flight = bytes_in_flight(quic)
    assert flight > 100

    async def scenario() -> tuple[bool, bool, tuple[int, int]]:
        protocol = PeerProtocol(quic)
        _, writer = protocol.make_stream(quic.get_next_available_stream_id())
        adapter = writer.transport
        writer.write(b"x" * (2 * flight))
        paused_at_the_mark = adapter.paused
        writer.write(b"x")
        return paused_at_the_mark, adapter.paused, protocol.water_marks()

    paused_at_the_mark, paused_above, marks = asyncio.run(scenario())
    assert marks == (2 * flight, flight + flight // 2)
    assert not paused_at_the_mark
    assert paused_above


def test_the_default_ceiling_lets_a_stream_keep_a_large_window_in_flight() -> None:
    """A 16 MiB ceiling held one stream with 48 MiB windows to 16 MiB in flight in the NAT lab
    (121-146 MB/s against 203-217 with 64 MiB): with 24 MiB in flight the writer still queues as
    much again, and the tuning's own ceiling is only reached at 32 MiB in flight."""

    def marks(in_flight: int, tuning: Tuning) -> tuple[int, int]:
        return stream_water_marks(
            in_flight, tuning.stream_high_water, tuning.stream_low_water, tuning.stream_high_water_max
        )

    assert marks(24 * MIB, Tuning()) == (48 * MIB, 36 * MIB)
    lab = Tuning().for_path(250e6, 0.1)  # 48 MiB stream windows: up to 48 MiB in flight, 96 queued
    assert marks(48 * MIB, lab)[0] == 96 * MIB
