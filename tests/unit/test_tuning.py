"""Tuning reaches the places that read it, once, when a connection is set up."""

from __future__ import annotations

import asyncio

import pytest
from aioquic.quic.recovery import QuicPacketPacer

from discretpeer.connection import PeerProtocol
from discretpeer.dialer import peer_quic_configuration
from discretpeer.flow import AppPacedQuicConnection, BurstPacer
from discretpeer.tuning import DEFAULT_TUNING, Tuning, parse_tuning


def _connection(tuning: Tuning) -> AppPacedQuicConnection:
    return AppPacedQuicConnection(configuration=peer_quic_configuration(is_client=True, tuning=tuning))


def test_defaults_are_todays_values() -> None:
    quic = _connection(DEFAULT_TUNING)
    assert type(quic._loss._pacer) is BurstPacer
    assert quic.configuration.max_data == 16 * 1024 * 1024
    assert quic.configuration.max_stream_data == 8 * 1024 * 1024


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


def test_windows_congestion_control_and_ack_delay_follow_tuning() -> None:
    quic = _connection(Tuning(max_data=1 << 20, max_stream_data=1 << 18, congestion_control="cubic", ack_delay=0.004))
    assert (quic.connection_window, quic.stream_window) == (1 << 20, 1 << 18)  # the windows that slide
    assert type(quic._loss._cc).__name__ == "CubicCongestionControl"
    default = _connection(DEFAULT_TUNING)
    assert (default.connection_window, default.stream_window) == (16 * 1024 * 1024, 8 * 1024 * 1024)
    assert type(default._loss._cc).__name__ == "RenoCongestionControl"

    async def protocols() -> tuple[float, float]:
        PeerProtocol(quic)
        PeerProtocol(default)
        return quic._ack_delay, default._ack_delay

    assert asyncio.run(protocols()) == (0.004, 0.001)


def test_parse_tuning() -> None:
    parsed = parse_tuning(["gso=off", "max-data=1048576", "ack_delay=0.002", "congestion_control=cubic"])
    assert parsed == Tuning(gso=False, max_data=1 << 20, ack_delay=0.002, congestion_control="cubic")
    assert parse_tuning([]) == DEFAULT_TUNING
    assert parse_tuning(["ack_delay=none"], parsed).ack_delay is None
    for bad in ("gso", "nonsense=1", "gso=maybe", "max_data=lots"):
        with pytest.raises(ValueError, match="tuning"):
            parse_tuning([bad])
