"""Sending pace for a QUIC stack whose own pacer lets a whole window go at once: qh3 2.1's core
paces at congestion window / sRTT with a bucket as large as the congestion window (its
``recovery.rs`` ``Pacer``), so after a pause, or when the peer's credit arrives, everything the
window and the credit allow leaves when the core is polled.

A burst of a whole window at once queues at the path's bottleneck (a home line, a NAT's link),
and a drop-tail queue drops its tail: the sender sees losses that a paced sender of the same
window would not cause, and its round-trip estimate grows with the queue. :class:`SendPacer` is
a token bucket in bytes that lets datagrams go at ``gain`` x congestion window / smoothed RTT
(RFC 9002 section 7.7: N = 1.25, so pacing never limits the window's growth), with a burst of
at least ``min_burst`` datagrams and at least ``min_burst_seconds`` of the rate, so that the
event loop's late timers and GSO batches keep fast paths (loopback, LAN) at full speed.
Sans-I/O: the caller polls :meth:`may_send` (or takes the :meth:`allowance` of one moment),
reports what went with :meth:`sent`, and sets a timer for :meth:`next_send_time` when it stopped.
"""

from __future__ import annotations

PACING_GAIN = 1.25  # RFC 9002 section 7.7's N
MIN_WAIT = 1e-6  # seconds: the shortest round trip and the shortest wait the pacer reckons with
MIN_BURST_DATAGRAMS = 16  # what one GSO send carries (discretpeer.endpoint) and aioquic's pacer bursts
# the event loop's timers fire a millisecond late or more (epoll's resolution) and a busy loop
# later still: a bucket of a few ticks of the rate keeps a late sender at its rate
MIN_BURST_SECONDS = 0.004


class SendPacer:
    """A token bucket of bytes, refilled at the pacing rate (see the module docstring).

    Until :meth:`set_rate` has a round-trip estimate, nothing is paced."""

    def __init__(
        self,
        datagram_size: int,
        *,
        gain: float = PACING_GAIN,
        min_burst: int = MIN_BURST_DATAGRAMS,
        min_burst_seconds: float = MIN_BURST_SECONDS,
    ) -> None:
        if datagram_size <= 0 or gain <= 0 or min_burst < 1 or min_burst_seconds < 0:
            raise ValueError("SendPacer needs a positive datagram size and gain, and a burst of one or more")
        self.datagram_size = datagram_size
        self.gain = gain
        self.min_burst = min_burst
        self.min_burst_seconds = min_burst_seconds
        self.rate = 0.0  # bytes per second; 0: not paced (no round-trip estimate yet)
        self.burst = 0.0  # the bucket's size in bytes
        self.tokens = 0.0
        self.updated_at: float | None = None
        self.paced_bytes = 0  # what :meth:`sent` was told of while pacing

    def set_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        """Follow the stack's congestion window and smoothed RTT (seconds; 0 or less: unknown)."""
        if smoothed_rtt <= 0 or congestion_window <= 0:
            self.rate = 0.0
            return
        starting = self.rate == 0.0
        self.rate = self.gain * congestion_window / max(smoothed_rtt, MIN_WAIT)
        self.burst = max(self.min_burst * self.datagram_size, self.rate * self.min_burst_seconds)
        # pacing starts with a full bucket; a smaller rate shrinks what is left in it
        self.tokens = self.burst if starting else min(self.tokens, self.burst)

    def _refill(self, now: float) -> None:
        last = self.updated_at
        if last is None or now > last:
            if last is not None:
                self.tokens = min(self.burst, self.tokens + (now - last) * self.rate)
            self.updated_at = now

    def may_send(self, now: float) -> bool:
        """Whether a datagram may go now (the bucket is not empty: a datagram may overdraw it)."""
        if self.rate == 0.0:
            return True
        self._refill(now)
        return self.tokens > 0

    def allowance(self, now: float) -> float | None:
        """Bytes that may go now, datagram after datagram while what went is below it (the last
        may overdraw it, as with :meth:`may_send`); None: not paced. Report them with :meth:`sent`."""
        if self.rate == 0.0:
            return None
        self._refill(now)
        return self.tokens

    def sent(self, size: int, now: float) -> None:
        """A datagram of ``size`` bytes left at ``now``."""
        if self.rate == 0.0:
            return
        self._refill(now)
        self.tokens -= size
        self.paced_bytes += size

    def next_send_time(self, now: float) -> float | None:
        """When the next datagram may go (``now`` if it may already; None: not paced)."""
        if self.rate == 0.0:
            return None
        self._refill(now)
        if self.tokens > 0:
            return now
        # one byte into the bucket, and never "now" again (a wait below the clock's resolution)
        return now + max((1.0 - self.tokens) / self.rate, MIN_WAIT)
