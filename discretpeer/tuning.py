"""Data-path tunables of a :class:`discretpeer.Peer`, read once when a connection or the socket is set up.

The defaults are what the library uses; the benchmarks pass other values to measure what each
measure is worth (benchmarks/variants.py) instead of patching modules.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_HIGH_WATER = 1024 * 1024  # unacknowledged bytes per stream before writer.drain() waits
STREAM_LOW_WATER = 256 * 1024
STREAM_HIGH_WATER_MAX = 16 * 1024 * 1024  # what the bytes in flight can raise the high mark to
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024


@dataclass(frozen=True)
class Tuning:
    """``stream_high_water`` / ``stream_low_water``: unacknowledged bytes on a stream at which a
    writer pauses / resumes, at least: the marks follow the connection's bytes in flight (high
    2x, low 1.5x, see :func:`discretpeer.flow.stream_water_marks`) up to ``stream_high_water_max``,
    so that one stream keeps a long path full. ``max_data`` / ``max_stream_data``: the receive windows a peer
    connection announces. ``burst_pacer``: discretpeer.flow.BurstPacer (off: aioquic's pacer).
    ``coalesce_transmits``: on a loop that delivers several datagrams per wakeup (uvloop), one
    transmit per batch (off: one after every datagram). ``batched_reads``: on asyncio's own loop,
    read several datagrams per wakeup ourselves (off: its transport's one per wakeup)."""

    stream_high_water: int = STREAM_HIGH_WATER
    stream_low_water: int = STREAM_LOW_WATER
    stream_high_water_max: int = STREAM_HIGH_WATER_MAX
    max_data: int = CONNECTION_WINDOW
    max_stream_data: int = STREAM_WINDOW
    burst_pacer: bool = True
    coalesce_transmits: bool = True
    batched_reads: bool = True


DEFAULT_TUNING = Tuning()
