"""Tuning reaches the places that read it, once, when a connection is set up."""

from __future__ import annotations

import asyncio

from aioquic.quic.recovery import QuicPacketPacer

from discretpeer.connection import PeerProtocol
from discretpeer.dialer import peer_quic_configuration
from discretpeer.flow import AppPacedQuicConnection, BurstPacer
from discretpeer.tuning import DEFAULT_TUNING, Tuning


def _connection(tuning: Tuning) -> AppPacedQuicConnection:
    return AppPacedQuicConnection(configuration=peer_quic_configuration(is_client=True, tuning=tuning))


def test_defaults_are_todays_values() -> None:
    quic = _connection(DEFAULT_TUNING)
    assert type(quic._loss._pacer) is BurstPacer
    assert quic.configuration.max_data == 16 * 1024 * 1024
    assert quic.configuration.max_stream_data == 4 * 1024 * 1024


def test_tuning_is_passed_down() -> None:
    tuning = Tuning(
        stream_high_water=4096, stream_low_water=1024, max_data=1 << 20, max_stream_data=1 << 18, burst_pacer=False
    )
    quic = _connection(tuning)
    assert type(quic._loss._pacer) is QuicPacketPacer
    assert (quic.configuration.max_data, quic.configuration.max_stream_data) == (1 << 20, 1 << 18)

    async def protocol() -> PeerProtocol:
        return PeerProtocol(quic)

    made = asyncio.run(protocol())
    assert (made.stream_high_water, made.stream_low_water) == (4096, 1024)


def test_the_pacer_burst_is_larger_only_on_short_paths() -> None:
    """BurstPacer: 64 datagrams per burst up to 10 ms of RTT (never more than a quarter of the
    window), 16 beyond; ``Tuning(short_path_burst=16)`` keeps 16 everywhere."""
    size = 1472

    def burst(pacer: BurstPacer, window_datagrams: int, rtt: float) -> float:
        pacer.update_rate(window_datagrams * size, rtt)
        assert pacer.packet_time is not None
        return pacer.bucket_max / pacer.packet_time

    pacer = BurstPacer(max_datagram_size=size)
    assert round(burst(pacer, 1000, 0.001)) == 64  # loopback: 1 ms
    assert round(burst(pacer, 1000, 0.008)) == 64  # LAN
    assert round(burst(pacer, 1000, 0.080)) == 16  # the NAT lab's 80 ms: unchanged
    assert round(burst(pacer, 128, 0.002)) == 32  # a quarter of a 128-datagram window
    assert round(burst(pacer, 40, 0.002)) == 16  # never below the long-path burst
    small = BurstPacer(max_datagram_size=size, short_path_burst=16)
    assert round(burst(small, 1000, 0.001)) == 16
    assert _connection(Tuning(short_path_burst=16))._loss._pacer.short_path_burst == 16
    assert _connection(DEFAULT_TUNING)._loss._pacer.short_path_burst == 64
