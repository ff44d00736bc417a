"""Prometheus metrics of one beacon: its own CollectorRegistry (no global registry) and a tiny
asyncio HTTP endpoint serving the text format.

Rare events are prometheus counters; hot numbers (relay bytes, open connections, tokens) are
plain ints kept by the server and read at scrape time through :class:`_Snapshot`, so the forward
path never touches a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from discretpeer.addresses import Addr
from discretpeer.tasks import wait_for

# name → (kind, help). A value is a number or a mapping label value → number (label "reason").
SNAPSHOT_METRICS: dict[str, tuple[str, str]] = {
    "beacon_open_connections": ("gauge", "Client connections open now (QUIC and TLS/TCP)"),
    "beacon_tcp_open_connections": ("gauge", "TLS/TCP client connections open now"),
    "beacon_tcp_handshakes_in_progress": ("gauge", "TCP connections in their TLS handshake"),
    "beacon_tcp_web_connections": ("gauge", "Browser connections (HTTPS, WebSocket) on the TLS/TCP listener"),
    "beacon_tcp_relay_backlog_drops": (
        "counter",
        "Relayed datagrams dropped because a TCP client had too many unsent bytes",
    ),
    "beacon_tokens_held": ("gauge", "Tokens held, summed over connections"),
    "beacon_distinct_tokens": ("gauge", "Distinct tokens someone waits on"),
    "beacon_relay_active_sessions": ("gauge", "Relay sessions open now"),
    "beacon_relay_pending_requests": ("gauge", "Relay requests waiting for the other peer"),
    "beacon_relay_bytes": ("counter", "Bytes forwarded by the relay"),
    "beacon_relay_datagrams": ("counter", "Datagrams forwarded by the relay"),
    "beacon_relay_runs": ("counter", "Runs of relayed datagrams that arrived in one read and left in one send"),
    "beacon_relay_dropped_datagrams": ("counter", "Non-QUIC datagrams not forwarded, by reason"),
    "beacon_store_connected": ("gauge", "1 when the shared meeting store answers, 0 while it is lost (1 in memory)"),
    "beacon_store_failures": ("counter", "Times the shared meeting store was lost or found restarted"),
    "beacon_handshake_dropped_datagrams": (
        "counter",
        "Long-header datagrams dropped before any connection state, by reason (undecryptable, queue_full)",
    ),
    "beacon_stateless_resets": ("counter", "Stateless resets for unknown connection IDs: sent, rate_limited"),
}

Snapshot = Mapping[str, float | Mapping[str, float]]


class _Snapshot(Collector):
    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        return self._families(self._read())

    def _families(self, values: Snapshot) -> Iterator[Metric]:
        for name, (kind, help_text) in SNAPSHOT_METRICS.items():
            value = values.get(name, 0)
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            if isinstance(value, Mapping) or name.endswith("_dropped_datagrams"):
                family = family_type(name, help_text, labels=["reason"])
                value = value if isinstance(value, Mapping) else {}
                for label, number in value.items():
                    family.add_metric([label], number)
            else:
                family = family_type(name, help_text, value=value)
            yield family


class BeaconMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "beacon_connections", "Client connections accepted (QUIC, and TLS/TCP after its handshake)", registry=r
        )
        self.handshakes_refused = Counter(
            "beacon_handshakes_refused", "New connections refused before a handshake, by reason", ["reason"], registry=r
        )
        self.dropped_connections = Counter(
            "beacon_dropped_connections",
            "Connections closed for misusing QUIC (control stream reset, ...), by reason",
            ["reason"],
            registry=r,
        )
        self.retries = Counter("beacon_retries", "QUIC Retry packets sent (address validation)", registry=r)
        self.announces = Counter("beacon_announces", "Announce frames applied", registry=r)
        self.introductions = Counter("beacon_introductions", "Introduction frames sent", registry=r)
        self.rejections = Counter(
            "beacon_rejections", "Error frames sent to clients, by reason", ["reason"], registry=r
        )
        self.relay_sessions = Counter("beacon_relay_sessions", "Relay sessions granted", registry=r)
        self.relay_ended = Counter(
            "beacon_relay_sessions_ended", "Relay sessions ended, by reason", ["reason"], registry=r
        )
        self.tcp_refused = Counter(
            "beacon_tcp_refused",
            "TCP connections closed for bad input (garbage, plain_http, wrong_alpn, tls_failed, handshake_timeout, "
            "too_large, malformed, truncated, too_many_connections (web), ...), by reason",
            ["reason"],
            registry=r,
        )
        self.relay_refusals = Counter(
            "beacon_relay_refusals", "Relay requests refused, by reason", ["reason"], registry=r
        )

    def watch(self, read: Callable[[], Snapshot]) -> None:
        """Register the server's snapshot of plain numbers (see :data:`SNAPSHOT_METRICS`)."""
        self.registry.register(_Snapshot(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsHTTPServer:
    """``GET /metrics`` (or ``/``) → the text exposition format. Anything else → 404."""

    def __init__(self, metrics: BeaconMetrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> Addr:
        self._server = await asyncio.start_server(self._handle, host, port)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
            if parts[:1] == [b"GET"] and path in (b"/metrics", b"/"):
                body, status, ctype = self._metrics.render(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await wait_for(self._server.wait_closed(), timeout=2.0)
            self._server = None
