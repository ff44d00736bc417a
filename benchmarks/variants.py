"""Settings and ablations of discretpeer, applied inside the benchmark's own peer processes (the
benchmarks never edit discretpeer/): each turns one of the library's data-path measures off, or
changes a static setting, so the table shows what each one is worth. All are fields of
:class:`discretpeer.tuning.Tuning`, passed as ``Peer(tuning=...)`` (the CLI: ``--tuning NAME=VALUE``),
except the loop and ``--dgram`` (``Peer(max_datagram_size=N)``).

- ``--uvloop``: run on uvloop (the library works on either loop; the CLI picks uvloop).
- ``--no-pmtu``: no path-MTU probing: 1350-byte datagrams all along.
- ``--no-pacer-burst``: aioquic's own pacer instead of :class:`discretpeer.flow.BurstPacer`.
- ``--no-qh3-pacer``: qh3's own pacer only, whose bucket lets a whole window go at once
  (no :mod:`discretpeer.send_pacer`).
- ``--no-coalesce``: a transmit after every received datagram, as aioquic does, also on uvloop.
- ``--no-gso``: one sendto per datagram, one datagram per recvfrom (no UDP GSO/GRO).
- ``--no-batch-reads``: on asyncio's loop, one datagram per wakeup (its transport's reading).
- ``--no-short-routing``: the endpoint parses every datagram's header to route it.
- ``--dgram N``: ``Peer(max_datagram_size=N)`` (the public setting: on qh3 the size sent, on
  aioquic where probing stops).
- ``--stack aioquic``: peer connections on aioquic (``Tuning(quic_stack=...)``; the default is qh3).
- ``--window N``, ``--ack-delay S``, ``--high-water N``: static settings.
- ``--path RATE@RTT``: windows sized for such a path (``Tuning.for_path``, the CLI's ``--tuning path=``).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discretpeer.tuning import Tuning


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dgram", type=int, default=0, help="Peer(max_datagram_size=N)")
    parser.add_argument("--window", type=int, default=0, help="max_data and max_stream_data")
    parser.add_argument("--ack-delay", type=float, default=0.0, help="aioquic's ACK delay in seconds")
    parser.add_argument("--high-water", type=int, default=0, help="Tuning.stream_high_water")
    parser.add_argument("--no-pmtu", action="store_true", help="no path-MTU probing")
    parser.add_argument("--no-pacer-burst", action="store_true", help="aioquic's own pacer")
    parser.add_argument("--no-qh3-pacer", action="store_true", help="qh3's own pacer only (Tuning.qh3_pacer off)")
    parser.add_argument("--no-coalesce", action="store_true", help="a transmit after every datagram")
    parser.add_argument("--no-gso", action="store_true", help="no UDP GSO sends nor GRO reads")
    parser.add_argument(
        "--no-batch-reads",
        action="store_true",
        help="asyncio's loop: its transport reads one datagram per wakeup (Tuning.batched_reads)",
    )
    parser.add_argument("--no-short-routing", action="store_true", help="full header parse to route each datagram")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--stack", choices=("qh3", "aioquic"), help="peer connections' QUIC stack (Tuning.quic_stack)")
    parser.add_argument("--path", default="", help="windows for RATE@RTT, e.g. 2gbit@100ms (Tuning.for_path)")


def variant_tuning(args: Any) -> Tuning:
    """The :class:`discretpeer.tuning.Tuning` the flags ask for (``Peer(tuning=...)``)."""
    from discretpeer.tuning import Tuning, parse_path

    changes: dict[str, Any] = {}
    if getattr(args, "window", 0):
        changes.update(max_data=args.window, max_stream_data=args.window)
    if getattr(args, "high_water", 0):
        changes.update(stream_high_water=args.high_water, stream_low_water=args.high_water // 4)
    if getattr(args, "ack_delay", 0.0):
        changes["ack_delay"] = args.ack_delay
    changes.update({field: False for flag, field in _OFF_SWITCHES.items() if getattr(args, flag, False)})
    if getattr(args, "stack", None):
        changes["quic_stack"] = args.stack
    tuning = Tuning(**changes)
    if getattr(args, "path", ""):
        tuning = tuning.for_path(*parse_path(args.path))
    return tuning


# ablation flag (argparse dest) → the Tuning field it turns off
_OFF_SWITCHES = {
    "no_pacer_burst": "burst_pacer",
    "no_qh3_pacer": "qh3_pacer",
    "no_batch_reads": "batched_reads",
    "no_coalesce": "coalesce_transmits",
    "no_pmtu": "path_mtu_probing",
    "no_gso": "gso",
    "no_short_routing": "short_header_routing",
}


def tuning_options(tuning: Tuning) -> list[str]:
    """The CLI's ``--tuning NAME=VALUE`` options for the fields of ``tuning`` that differ from the defaults."""
    from discretpeer.tuning import DEFAULT_TUNING

    return [
        f"--tuning={field.name}={getattr(tuning, field.name)}"
        for field in dataclasses.fields(tuning)
        if getattr(tuning, field.name) != getattr(DEFAULT_TUNING, field.name)
    ]
