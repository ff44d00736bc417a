"""A one-line summary at info level every ``summary_interval_seconds``: an operator sees at a
glance that a beacon serves (peers now, and what happened since the previous line).

The numbers are read from the beacon's own metrics registry (the counters and the server's
snapshot of plain numbers), so the server needs no extra bookkeeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

from beacon.metrics import BeaconMetrics

# field in the log line → Prometheus sample name; "gauge" fields are shown as they are now,
# the others as the increase since the previous line
_GAUGES = {
    "peers": "beacon_open_connections",
    "tokens": "beacon_distinct_tokens",
    "relay_active": "beacon_relay_active_sessions",
}
_COUNTERS = {
    "new_connections": "beacon_connections_total",
    "introductions": "beacon_introductions_total",
    "relay_sessions": "beacon_relay_sessions_total",
    "relay_bytes": "beacon_relay_bytes_total",
}


def read_counts(metrics: BeaconMetrics) -> dict[str, int]:
    """The current value of every summary field (counters as totals)."""
    samples: dict[str, float] = {}
    for family in metrics.registry.collect():  # one pass over the registry
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = sample.value
    return {field: int(samples.get(name, 0)) for field, name in {**_GAUGES, **_COUNTERS}.items()}


def summarize(previous: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    """Gauges as they are now, counters as the increase since ``previous``."""
    return {field: now[field] if field in _GAUGES else now[field] - previous[field] for field in now}


async def log_summaries(metrics: BeaconMetrics, log: Any, interval: float) -> None:
    """Log ``summary`` every ``interval`` seconds until cancelled (``interval <= 0``: never)."""
    if interval <= 0:
        return
    previous = read_counts(metrics)
    while True:
        await asyncio.sleep(interval)
        now = read_counts(metrics)
        log.info("summary", seconds=interval, **summarize(previous, now))
        previous = now
