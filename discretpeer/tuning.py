"""Data-path tunables of a :class:`discretpeer.Peer`, read once when a connection or the socket is set up.

The defaults are what the library uses; the benchmarks pass other values to measure what each
measure is worth (benchmarks/variants.py) instead of patching modules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STREAM_HIGH_WATER = 1024 * 1024  # unacknowledged bytes per stream before writer.drain() waits
STREAM_LOW_WATER = 256 * 1024
# what the bytes in flight can raise the high mark to: it costs only while that much is in flight
# (the marks follow the flight), and 16 MiB held a stream with 48 MiB windows to 16 MiB in flight
# (121-146 MB/s in the NAT lab against 203-217 with 64 MiB, benchmarks/README.md)
STREAM_HIGH_WATER_MAX = 64 * 1024 * 1024
# a writer that never waits (its marks follow a large flight) yields to the event loop after this
# many bytes written in one loop iteration: without it, `write(); await drain()` over the 80 ms NAT
# lab with 48 MiB windows held the loop for 106-180 ms at a time, the connection's ACKs waited and
# its sRTT rose to 167-211 ms against 92-101 (benchmarks/README.md, "The writer's slices")
WRITE_SLICE = 1024 * 1024
# a stream may have this much in flight towards us: at an 85 ms round trip, 8 MiB carries ~2x what
# 4 MiB did on qh3 (benchmarks/README.md, NAT lab); a stalled reader holds up to it
STREAM_WINDOW = 8 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MIN_WINDOW = 16 * 1024  # a receive window below this cannot keep a datagram's worth per stream moving
MAX_BYTES = 1 << 30  # any byte count of a Tuning: a window or a mark above 1 GiB is a mistake, not a setting
CONGESTION_CONTROLS = ("reno", "cubic")
MIN_PATH_RTT = 0.0001  # for_path: a round trip below 0.1 ms (or a rate below 1 kB/s) is a mistake
MIN_PATH_RATE = 1000.0


@dataclass(frozen=True)
class Tuning:
    """``stream_high_water`` / ``stream_low_water``: unacknowledged bytes on a stream at which a
    writer pauses / resumes, at least: the marks follow the connection's bytes in flight (high
    2x, low 1.5x, see :func:`discretpeer.flow.stream_water_marks`) up to ``stream_high_water_max``,
    so that one stream keeps a long path full. ``max_data`` / ``max_stream_data``: the receive
    windows a peer connection announces (and slides: discretpeer._aioquic.SlidingCredit);
    :meth:`for_path` sizes them for a path's rate and round trip.
    ``congestion_control``: aioquic's algorithm ("reno", "cubic"). ``ack_delay``: seconds aioquic
    waits before it acknowledges (None: its own, 1 ms). ``path_mtu_probing``: probe for datagrams
    larger than 1350 bytes (off: 1350 all along). ``gso``: UDP GSO sends and GRO reads where the
    kernel has them (off: one datagram per system call). ``burst_pacer``:
    discretpeer.flow.BurstPacer (off: aioquic's pacer).
    ``coalesce_transmits``: on a loop that delivers several datagrams per wakeup (uvloop), one
    transmit per batch (off: one after every datagram). ``batched_reads``: on asyncio's own loop,
    read several datagrams per wakeup ourselves (off: its transport's one per wakeup).
    ``short_header_routing``: route a short-header datagram by the connection ID after its first
    byte (off: parse every header to route it). ``quic_stack``: what peer connections run on,
    ``"qh3"`` (qh3 2.1, Rust core, see discretpeer._qh3: no path-MTU probing, 1350-byte datagrams
    unless ``Peer(max_datagram_size)`` says otherwise) or ``"aioquic"`` (probes for larger datagrams;
    ``burst_pacer``, ``congestion_control`` and ``ack_delay`` apply to it only). ``qh3_pacer``: pace
    a qh3 connection's sends at 1.25x its congestion window per round trip (discretpeer.send_pacer;
    off: qh3's own pacer, whose bucket lets a whole window go at once). ``write_slice``: bytes a
    stream's writer may write in one event-loop iteration before ``drain()`` yields to the loop
    once (0: only the water marks make it wait). Beacon connections always run on aioquic."""

    stream_high_water: int = STREAM_HIGH_WATER
    stream_low_water: int = STREAM_LOW_WATER
    stream_high_water_max: int = STREAM_HIGH_WATER_MAX
    max_data: int = CONNECTION_WINDOW
    max_stream_data: int = STREAM_WINDOW
    burst_pacer: bool = True
    coalesce_transmits: bool = True
    batched_reads: bool = True
    congestion_control: str = "reno"
    ack_delay: float | None = None
    path_mtu_probing: bool = True
    gso: bool = True
    short_header_routing: bool = True
    quic_stack: str = "qh3"
    qh3_pacer: bool = True
    write_slice: int = WRITE_SLICE

    def for_path(self, rate: float, rtt: float) -> Tuning:
        """This tuning with windows sized for one stream to carry ``rate`` bytes/s over a round
        trip of ``rtt`` seconds (its bandwidth-delay product): qh3's core grants credit in
        half-window steps, so a stream keeps about half its window in flight, and the stream
        window is 2 x rate x rtt, the connection window twice that, the writer's ceiling
        (``stream_high_water_max``: twice the flight) at least twice the stream window; none
        below this tuning's own (on aioquic, which slides its credit, about twice what the path
        needs). A reader that stops can leave up to the stream window unread (memory, per stream).
        Raises ValueError naming the problem (a window above 1 GiB included)."""
        for name, value, low, unit in (("rate", rate, MIN_PATH_RATE, "bytes/s"), ("rtt", rtt, MIN_PATH_RTT, "s")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
                raise ValueError(
                    f"tuning for_path: {name} must be a finite number of at least {low:g} {unit}, got {value!r}"
                )
        need = 2 * rate * rtt  # may be infinite: a finite rate times a finite round trip
        stream = max(self.max_stream_data, _round_up_mib(need) if need <= MAX_BYTES else MAX_BYTES)
        if 2 * stream > MAX_BYTES:
            raise ValueError(
                f"tuning for_path: {rate:g} B/s over {rtt * 1000:g} ms needs windows above {MAX_BYTES} bytes"
            )
        return dataclasses.replace(
            self,
            max_stream_data=stream,
            max_data=max(self.max_data, 2 * stream),
            stream_high_water_max=max(self.stream_high_water_max, 2 * stream),
        )

    def __post_init__(self) -> None:
        for name, low in (("max_data", MIN_WINDOW), ("max_stream_data", MIN_WINDOW), ("stream_high_water", 1),
                          ("stream_low_water", 1), ("stream_high_water_max", 1), ("write_slice", 0)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_BYTES:
                raise ValueError(f"tuning {name} must be an integer from {low} to {MAX_BYTES}, got {value!r}")
        if self.stream_low_water > self.stream_high_water:
            raise ValueError(
                f"tuning stream_low_water ({self.stream_low_water}) is above "
                f"stream_high_water ({self.stream_high_water})"
            )
        if self.congestion_control not in CONGESTION_CONTROLS:
            raise ValueError(
                f"tuning congestion_control must be one of {', '.join(CONGESTION_CONTROLS)}, "
                f"got {self.congestion_control!r}"
            )
        delay = self.ack_delay
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 1
        ):
            raise ValueError(f"tuning ack_delay must be None or seconds from 0 to 1, got {delay!r}")


DEFAULT_TUNING = Tuning()


def _round_up_mib(value: float) -> int:
    mib = 1024 * 1024
    return int(-(-value // mib)) * mib


def parse_tuning(entries: Iterable[str], base: Tuning = DEFAULT_TUNING) -> Tuning:
    """``base`` with ``NAME=VALUE`` entries applied (NAME: a field, ``-`` or ``_``; booleans as
    on/off, true/false, 1/0; ``ack_delay=none``: aioquic's), then ``path=RATE@RTT`` entries
    (:meth:`Tuning.for_path`, e.g. ``path=1gbit@80ms``, see :func:`parse_path`). Raises
    ValueError naming the problem."""
    names = [f.name for f in dataclasses.fields(Tuning)]
    changes: dict[str, Any] = {}
    paths: list[tuple[float, float, str]] = []
    for entry in entries:
        name, equals, text = entry.partition("=")
        name = name.strip().replace("-", "_")
        if equals and name == "path":
            paths.append((*parse_path(text, entry), entry))
            continue
        if not equals or name not in names:
            raise ValueError(f"tuning {entry!r}: expected NAME=VALUE, NAME one of {', '.join(names)} or path")
        try:
            changes[name] = _tuning_value(getattr(DEFAULT_TUNING, name), text.strip())
        except ValueError:
            raise ValueError(f"tuning {entry!r}: invalid value for {name}") from None
    tuning = dataclasses.replace(base, **changes)
    for rate, rtt, entry in paths:
        try:
            tuning = tuning.for_path(rate, rtt)
        except ValueError as exc:
            raise ValueError(f"tuning {entry!r}: {str(exc).removeprefix('tuning for_path: ')}") from None
    return tuning


_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_RTT_UNITS = {"ms": 1e-3, "s": 1.0}


def parse_path(text: str, entry: str | None = None) -> tuple[float, float]:
    """``RATE@RTT`` (``1gbit@80ms``, ``250mbit@0.2s``; rate in bit, kbit, mbit or gbit per
    second, round trip in ms or s) as (bytes per second, seconds). Raises ValueError naming the entry."""
    where = f"tuning {entry if entry is not None else text!r}"
    rate_text, at, rtt_text = text.strip().lower().partition("@")
    rate = _number_with_unit(rate_text, _RATE_UNITS)
    rtt = _number_with_unit(rtt_text, _RTT_UNITS)
    if not at or rate is None or rtt is None:
        raise ValueError(
            f"{where}: expected path=RATE@RTT, e.g. path=1gbit@80ms (rate: bit, kbit, mbit, gbit; rtt: ms, s)"
        )
    return rate / 8, rtt


def _number_with_unit(text: str, units: dict[str, float]) -> float | None:
    """``<number><unit>`` (a unit of ``units``) as the number times the unit's factor, or None."""
    text = text.strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            number = text[: -len(unit)].strip()
            try:
                value = float(number)
            except ValueError:
                return None
            return value * units[unit] if math.isfinite(value) else None
    return None


def _tuning_value(default: Any, text: str) -> Any:
    if isinstance(default, bool):
        flags = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
        if text.lower() not in flags:
            raise ValueError(text)
        return flags[text.lower()]
    if isinstance(default, int):
        return int(text)
    if isinstance(default, str):
        return text
    return None if text.lower() == "none" else float(text)  # ack_delay: seconds or None


def tuning_of(quic: Any) -> Tuning:
    """The Tuning a QuicConnection was configured with (the defaults if its configuration has none)."""
    tuning: Tuning = getattr(quic.configuration, "tuning", DEFAULT_TUNING)
    return tuning
