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
