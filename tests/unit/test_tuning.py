"""Tuning reaches the places that read it, once, when a connection is set up."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

import pytest
from aioquic.quic.recovery import QuicPacketPacer
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.connection import PeerProtocol
from discretpeer.dialer import peer_quic_configuration
from discretpeer.flow import AppPacedQuicConnection, BurstPacer
from discretpeer.tuning import DEFAULT_TUNING, MAX_BYTES, Tuning, parse_path, parse_tuning


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
    assert parse_tuning(["write-slice=0"]) == Tuning(write_slice=0)  # off
    for bad in ("gso", "nonsense=1", "gso=maybe", "max_data=lots"):
        with pytest.raises(ValueError, match="tuning"):
            parse_tuning([bad])


@pytest.mark.parametrize(
    "entry, named",
    [
        ("max_data=-1", "max_data must be an integer from 16384"),
        ("max_stream_data=1", "max_stream_data must be an integer from 16384"),
        ("max_stream_data=4294967296", "to 1073741824"),
        ("stream_high_water=0", "stream_high_water must be"),
        ("stream_low_water=99999999", "stream_low_water \\(99999999\\) is above stream_high_water"),
        ("congestion_control=bbr", "congestion_control must be one of reno, cubic, got 'bbr'"),
        ("ack_delay=5", "ack_delay must be None or seconds from 0 to 1"),
        ("ack_delay=nan", "ack_delay must be None or seconds"),
        ("ack_delay=-0.1", "ack_delay must be None or seconds"),
        ("write_slice=-1", "write_slice must be an integer from 0 to 1073741824, got -1"),
        ("write_slice=2147483648", "write_slice must be an integer from 0"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_field(entry: str, named: str) -> None:
    """A window of -1 or 1 GB+, a low mark above the high one, an unknown algorithm: a clear error
    (the CLI's --tuning turns it into a config error), never a connection that stalls or a buffer
    without bound."""
    with pytest.raises(ValueError, match=named):
        parse_tuning([entry])


def test_the_long_path_settings_of_the_readme_are_accepted() -> None:
    tuning = parse_tuning(["max_stream_data=16777216", "max_data=33554432"])
    assert (tuning.max_stream_data, tuning.max_data) == (16 << 20, 32 << 20)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "`Tuning().for_path(rate, rtt)`" in readme and "`--tuning path=1gbit@80ms`" in readme
    assert "20 MiB / 40 MiB for 1 Gbit/s at 80 ms" in readme  # what the next test computes


@given(st.lists(st.text(max_size=40), max_size=4))
def test_parse_tuning_raises_only_value_error(entries: list[str]) -> None:
    try:
        tuning = parse_tuning(entries)
    except ValueError:
        return
    assert isinstance(tuning, Tuning)


FIELDS_BY_TEXT = ["max_data", "max_stream_data", "stream_high_water", "ack_delay", "congestion_control", "write_slice"]


@given(st.sampled_from(FIELDS_BY_TEXT), st.text(max_size=30))
def test_any_value_of_a_field_is_a_tuning_or_a_value_error(name: str, value: str) -> None:
    try:
        tuning = parse_tuning([f"{name}={value}"])
    except ValueError as exc:
        assert "tuning" in str(exc)
        return
    Tuning(**{f: getattr(tuning, f) for f in ("max_data", "max_stream_data", "ack_delay")})  # valid again


def test_qh3_connections_are_paced_unless_tuning_says_otherwise() -> None:
    from discretpeer._qh3 import Qh3Connection
    from discretpeer.send_pacer import SendPacer

    def made(tuning: Tuning) -> Qh3Connection:
        return Qh3Connection(configuration=peer_quic_configuration(is_client=True, tuning=tuning))

    assert isinstance(made(DEFAULT_TUNING)._pacer, SendPacer)
    assert made(Tuning(qh3_pacer=False))._pacer is None
    assert parse_tuning(["qh3-pacer=off"]) == Tuning(qh3_pacer=False)


MIB = 1024 * 1024


def test_for_path_sizes_the_windows_for_twice_the_bandwidth_delay_product() -> None:
    """qh3 grants credit in half-window steps: a stream window of 2 x rate x RTT keeps the path full."""
    gigabit = parse_tuning(["path=1gbit@80ms"])  # 125 MB/s x 80 ms = 10 MB: 20 MB, rounded up to MiB
    assert (gigabit.max_stream_data, gigabit.max_data, gigabit.stream_high_water_max) == (20 * MIB, 40 * MIB, 64 * MIB)
    lab = DEFAULT_TUNING.for_path(250e6, 0.1)  # the NAT lab's benchmark row
    assert (lab.max_stream_data, lab.max_data, lab.stream_high_water_max) == (48 * MIB, 96 * MIB, 96 * MIB)
    assert lab == parse_tuning(["path=2gbit@0.1s"])
    assert _connection(lab).configuration.max_stream_data == 48 * MIB


def test_for_path_never_lowers_a_window() -> None:
    assert parse_tuning(["path=1gbit@1ms"]) == DEFAULT_TUNING  # a LAN: the defaults already cover it
    bigger = Tuning(max_stream_data=30 * MIB, max_data=200 * MIB)
    assert bigger.for_path(125e6, 0.08) == dataclasses.replace(bigger, stream_high_water_max=64 * MIB)
    # field entries apply first, whatever their order, then the path
    assert parse_tuning(["path=1gbit@80ms", "max_stream_data=33554432"]).max_stream_data == 32 * MIB


@pytest.mark.parametrize(
    "entry, named",
    [
        ("path=1gbit", "expected path=RATE@RTT"),
        ("path=1gbit@80", "expected path=RATE@RTT"),
        ("path=fastgbit@80ms", "expected path=RATE@RTT"),
        ("path=infgbit@80ms", "expected path=RATE@RTT"),
        ("path=1gbit@0ms", "'path=1gbit@0ms': rtt must be a finite number of at least 0.0001 s"),
        ("path=1bit@1ms", "rate must be a finite number of at least 1000 bytes/s"),
        ("path=100gbit@1s", "needs windows above 1073741824 bytes"),
        ("path=1e200gbit@1e200s", "needs windows above 1073741824 bytes"),  # their product overflows
    ],
)
def test_bad_paths_are_refused_naming_the_entry(entry: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_tuning([entry])


@given(st.floats(min_value=1e3, max_value=1e11), st.floats(min_value=1e-4, max_value=100))
def test_for_path_covers_the_path_or_refuses(rate: float, rtt: float) -> None:
    try:
        tuning = DEFAULT_TUNING.for_path(rate, rtt)
    except ValueError as exc:
        assert "needs windows above" in str(exc)
        assert 4 * rate * rtt > MAX_BYTES - 4 * MIB  # refused only when the windows would pass 1 GiB
        return
    assert tuning.max_stream_data >= max(2 * rate * rtt, DEFAULT_TUNING.max_stream_data)
    assert tuning.max_stream_data - 2 * rate * rtt < MIB or tuning.max_stream_data == DEFAULT_TUNING.max_stream_data
    assert tuning.max_data >= 2 * tuning.max_stream_data
    assert tuning.stream_high_water_max >= 2 * tuning.max_stream_data
    assert max(tuning.max_data, tuning.stream_high_water_max) <= MAX_BYTES


_RATES = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


@given(st.integers(1, 10**6), st.sampled_from(sorted(_RATES)), st.integers(1, 10**5), st.sampled_from(["ms", "s"]))
def test_parse_path_reads_what_it_is_given(rate: int, rate_unit: str, rtt: int, rtt_unit: str) -> None:
    parsed = parse_path(f"{rate}{rate_unit.upper() if rate % 2 else rate_unit}@{rtt} {rtt_unit}")
    assert parsed == pytest.approx((rate * _RATES[rate_unit] / 8, rtt * (1e-3 if rtt_unit == "ms" else 1.0)))


@given(st.text(max_size=30))
def test_parse_path_raises_only_value_error(text: str) -> None:
    try:
        rate, rtt = parse_path(text)
    except ValueError as exc:
        assert "path=RATE@RTT" in str(exc)
        return
    assert math.isfinite(rate) and math.isfinite(rtt)  # for_path checks the range
