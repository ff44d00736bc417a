"""Settings and ablations of discretpeer, applied inside the benchmark's own peer processes (the
benchmarks never edit discretpeer/): each turns one of the library's data-path measures off, or
changes a static setting, so the table shows what each one is worth.

- ``--uvloop``: run on uvloop (the library works on either loop; the CLI picks uvloop).
- ``--no-pmtu``: no path-MTU probing: 1350-byte datagrams all along.
- ``--no-pacer-burst``: aioquic's own pacer instead of :class:`discretpeer.flow.BurstPacer`.
- ``--no-coalesce``: a transmit after every received datagram, as aioquic does, also on uvloop.
- ``--no-gso``: one sendto per datagram, one datagram per recvfrom (no UDP GSO/GRO).
- ``--no-batch-reads``: on asyncio's loop, one datagram per wakeup (its transport's reading).
- ``--dgram N``: ``Peer(max_datagram_size=N)`` (the public setting: probing stops at N).
- ``--window N``, ``--ack-delay S``, ``--high-water N``: static settings.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dgram", type=int, default=0, help="Peer(max_datagram_size=N)")
    parser.add_argument("--window", type=int, default=0, help="max_data and max_stream_data")
    parser.add_argument("--ack-delay", type=float, default=0.0, help="aioquic's ACK delay in seconds")
    parser.add_argument("--high-water", type=int, default=0, help="STREAM_HIGH_WATER in connection.py")
    parser.add_argument("--no-pmtu", action="store_true", help="no path-MTU probing")
    parser.add_argument("--no-pacer-burst", action="store_true", help="aioquic's own pacer")
    parser.add_argument("--no-coalesce", action="store_true", help="a transmit after every datagram")
    parser.add_argument("--no-gso", action="store_true", help="no UDP GSO sends nor GRO reads")
    parser.add_argument(
        "--no-batch-reads",
        action="store_true",
        help="asyncio's loop: its transport reads one datagram per wakeup (endpoint.READ_BATCH = 1)",
    )
    parser.add_argument("--uvloop", action="store_true")


def apply_variant(args: Any) -> None:
    overrides: dict[str, Any] = {}  # --dgram is Peer(max_datagram_size=...): see workers/peer.py
    if getattr(args, "window", 0):
        overrides["max_data"] = args.window
        overrides["max_stream_data"] = args.window
    if overrides:
        _patch_quic_configuration(overrides)
    if getattr(args, "high_water", 0):
        import discretpeer.connection as connection

        connection.STREAM_HIGH_WATER = args.high_water
        connection.STREAM_LOW_WATER = args.high_water // 4
    if getattr(args, "ack_delay", 0.0):
        _patch_ack_delay(args.ack_delay)
    if getattr(args, "no_pmtu", False):
        import discretpeer.connection as connection

        connection.probe_sizes = lambda *args, **kwargs: []  # type: ignore[assignment]  # patched for this test or benchmark
    if getattr(args, "no_pacer_burst", False):
        from aioquic.quic.recovery import QuicPacketPacer

        import discretpeer.flow as flow

        flow.BurstPacer = QuicPacketPacer  # type: ignore[misc]  # patched for this benchmark variant
    if getattr(args, "no_gso", False):
        import discretpeer.endpoint as endpoint

        endpoint.USE_GSO = endpoint.USE_GRO = False
    if getattr(args, "no_batch_reads", False):
        import discretpeer.endpoint as endpoint

        endpoint.READ_BATCH = 1
    if getattr(args, "no_coalesce", False):
        import discretpeer.endpoint as endpoint

        endpoint._batches_reads = lambda loop: False  # type: ignore[assignment]  # patched for this test or benchmark


def _patch_quic_configuration(overrides: dict[str, Any]) -> None:
    """Every configuration of a peer connection (a path_mtu.SizedQuicConfiguration) gets
    ``overrides`` (beacon connections, built in beacon_client, keep theirs)."""
    from discretpeer.path_mtu import SizedQuicConfiguration

    original = SizedQuicConfiguration.__init__

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.update(overrides)
        original(self, *args, **kwargs)

    SizedQuicConfiguration.__init__ = init  # type: ignore[method-assign]  # patched for this test or benchmark


def _patch_ack_delay(delay: float) -> None:
    """aioquic acknowledges K_GRANULARITY (1 ms) after an ack-eliciting packet."""
    import discretpeer.connection as connection

    original = connection.PeerProtocol.__init__

    def init(self: Any, quic: Any, **kwargs: Any) -> None:
        original(self, quic, **kwargs)
        quic._ack_delay = delay

    connection.PeerProtocol.__init__ = init  # type: ignore[method-assign]  # patched for this test or benchmark
