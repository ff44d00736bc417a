"""Rate and count limits as plain classes fed with times (sans-I/O, no clock of their own)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Hashable

from discretpeer.addresses import unmap_ip


@functools.lru_cache(maxsize=4096)  # every handshake asks (twice); parsing costs ~10 us
def ip_key(host: str) -> str:
    """What per-IP limits count: the IPv4 address, or the /64 of an IPv6 address (one site)."""
    host = host.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    ip = unmap_ip(ip)
    if ip.version == 6:
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens if there are enough; return whether it was allowed."""
        tokens = self.tokens
        if now > self.stamp:
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if tokens >= amount:
            self.tokens = tokens - amount
            return True
        self.tokens = tokens
        return False

    def is_full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class KeyedBuckets:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them.

    When full, idle (refilled) buckets are pruned; if none are, the oldest key is evicted, so a
    flood of spoofed sources costs bounded memory (the evicted key merely starts with a new burst).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def take(self, key: Hashable, now: float, amount: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.prune(now)
                if len(self._buckets) >= self.max_keys:
                    del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now, amount)

    def prune(self, now: float) -> int:
        """Forget buckets that are full again (their key behaves as new); return how many."""
        idle = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in idle:
            del self._buckets[key]
        return len(idle)

    def __len__(self) -> int:
        return len(self._buckets)


class KeyedCounts:
    """Counts per key (e.g. open connections per IP) that never store a zero."""

    def __init__(self) -> None:
        self._counts: dict[Hashable, int] = {}

    def get(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    def add(self, key: Hashable) -> int:
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count

    def remove(self, key: Hashable) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


class RateMeter:
    """Events per second over the last ``window`` seconds (two fixed buckets, interpolated)."""

    __slots__ = ("window", "_start", "_current", "_previous")

    def __init__(self, now: float, window: float = 1.0) -> None:
        self.window = window
        self._start = now
        self._current = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed >= self.window:
            periods = int(elapsed // self.window)
            self._previous = self._current if periods == 1 else 0
            self._current = 0
            self._start += periods * self.window

    def add(self, now: float, count: int = 1) -> None:
        self._roll(now)
        self._current += count

    def rate(self, now: float) -> float:
        self._roll(now)
        fraction = (now - self._start) / self.window
        return (self._previous * (1.0 - fraction) + self._current) / self.window
