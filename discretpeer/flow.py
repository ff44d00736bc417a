"""Receive windows that follow what the application has read (bounded receive buffers).

aioquic doubles a stream's (and the connection's) receive window whenever half of it has
*arrived*, whatever the application has read, so a slow reader lets the sender fill our memory
without bound. Here the windows slide: the peer may send at most ``window`` bytes beyond what
the application consumed, per stream and per connection. Credit is re-granted in steps of half a
window, when the application reads (the stream's reader wakes the connection, see
``connection.py``). The mechanics are :class:`discretpeer._aioquic.SlidingCredit`'s.

The sender side: :class:`BurstPacer`, and :func:`stream_water_marks` (how much a stream's
writer may leave unacknowledged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic.quic.recovery import QuicPacketPacer

from discretpeer._aioquic import SlidingCredit, set_pacer
from discretpeer.path_mtu import DatagramSizeSearch
from discretpeer.tuning import tuning_of

PACER_BURST = 16  # datagrams the pacer lets go at once, whatever its 1-us charge per datagram


class BurstPacer(QuicPacketPacer):
    """aioquic's pacer sizes its burst as 16 datagrams of true sending time but charges each
    datagram at least 1 us: on short paths (loopback, LAN) the burst shrinks to ~8 datagrams,
    and with the event loop's 1-ms timers the sender is capped at ~8 per millisecond (11 MB/s
    with 1452-byte datagrams) whatever the congestion window. Count the burst in charged
    datagrams; on long paths, where pacing matters, nothing changes."""

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        if self.packet_time is not None and self.bucket_max < PACER_BURST * self.packet_time:
            self.bucket_max = PACER_BURST * self.packet_time


def stream_water_marks(in_flight: int, high: int, low: int, ceiling: int) -> tuple[int, int]:
    """(high, low): unacknowledged bytes on a stream above which its writer pauses, and below
    which it resumes. Fixed marks cap one stream at high / RTT whatever the path carries (1 MiB
    at the NAT lab's 83 ms RTT: ~6 MB/s, with a 2 MB congestion window unused and no loss).
    Like Linux's send-buffer autotuning (2x what the connection has in flight), the marks follow
    the connection's bytes in flight: high at 2x, so as much again is queued behind the flight
    and the congestion window can fill (the flight grows, the mark with it), low at 1.5x, so data
    is still queued when the writer resumes. Not the congestion window itself: aioquic grows it
    on every acknowledgement even while flow control holds the sender, and a reader that stops
    must stop the writer near the tuning's marks (the flight then drains to nothing).
    ``high`` and ``low`` (the tuning's marks) are the floor, ``ceiling``
    (``Tuning.stream_high_water_max``; 3/4 of it for low) the ceiling."""
    return (
        max(high, min(2 * in_flight, ceiling)),
        max(low, min(in_flight + in_flight // 2, ceiling * 3 // 4)),
    )


def _no_unread(stream_id: int | None) -> int:
    return 0


class AppPacedQuicConnection(SlidingCredit, DatagramSizeSearch):
    """A QuicConnection whose flow-control credit follows the application's reads (and which
    can probe for larger datagrams, see :mod:`discretpeer.path_mtu`).

    ``unread(stream_id)`` returns the bytes received but not yet read on that stream
    (``unread(None)``: on all streams); the owning protocol sets it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unread: Callable[[int | None], int] = _no_unread
        tuning = tuning_of(self)
        self.stream_window = tuning.max_stream_data  # the sliding receive windows (SlidingCredit)
        self.connection_window = tuning.max_data
        pacer = BurstPacer if tuning.burst_pacer else QuicPacketPacer
        set_pacer(self, pacer(max_datagram_size=self.datagram_size))
