"""Shared pieces of the networked commands: the Peer, progress lines, the link to one peer."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from discretpeer.beacon_client import udp_unreachable
from discretpeer.config import ConfigError
from discretpeer.connection import PeerConnection
from discretpeer.errors import ConnectError
from discretpeer.identity import Identity
from discretpeer.peer import Peer

from .output import Console, ms, short_id
from .settings import Settings

RECONNECT_INITIAL = 1.0
RECONNECT_CAP = 30.0


def make_peer(settings: Settings, identity: Identity) -> Peer:
    if not settings.beacons and not settings.lan:
        raise ConfigError(
            "no beacon configured (beacons = [...] in the config file, DISCRETPEER_BEACONS or "
            "--beacon HOST:PORT=CERT_HASH) and LAN discovery is off (--lan)"
        )
    return Peer(
        identity,
        settings.beacons,
        host=settings.udp_host,
        port=settings.udp_port,
        lan=settings.lan,
        relay=settings.relay,
        direct=settings.direct,
    )


def format_address(address: Any) -> str:
    if address is None:
        return "?"
    host, port = (address.host, address.port) if hasattr(address, "host") else (address[0], address[1])
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def describe_beacons(peer: Peer) -> list[dict[str, Any]]:
    return [
        {
            "beacon": status.beacon,
            "state": status.state,
            "transport": status.transport,
            "observed": format_address(status.observed) if status.observed else None,
            "rtt_ms": None if status.rtt is None else round(status.rtt * 1000, 2),
            "last_error": status.last_error,
            "tokens_full": status.tokens_full,
            "full_refusal": status.full_refusal,
        }
        for status in peer.beacon_status
    ]


def describe_connection(conn: PeerConnection) -> dict[str, Any]:
    return {
        "peer": conn.peer_id,
        "path": conn.path,
        "remote": format_address(conn.remote_address),
        "rtt_ms": None if conn.rtt is None else round(conn.rtt * 1000, 2),
    }


class Progress:
    """Turns the peer's beacon states and counters into status lines as they change."""

    def __init__(self, peer: Peer, console: Console, *, interval: float = 0.1) -> None:
        self.peer = peer
        self.console = console
        self.interval = interval
        self._beacons: dict[str, tuple[str, str | None]] = {}
        self._introductions = 0
        self._relay_requests = 0
        self._relay_grants = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.console.before = self.poll
        self.poll()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.console.before == self.poll:
            self.console.before = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.poll()

    def poll(self) -> None:
        for status in self.peer.beacon_status:
            before = self._beacons.get(status.beacon)
            now = (status.state, status.last_error)
            if before == now:
                continue
            self._beacons[status.beacon] = now
            if status.state == "connected" and (before is None or before[0] != "connected"):
                over = "" if status.transport in (None, "udp") else f" over {status.transport} (UDP fails)"
                self.console.status(
                    f"beacon {status.beacon}: connected{over}, our public address {format_address(status.observed)}",
                    event="beacon",
                    beacon=status.beacon,
                    state="connected",
                    observed=format_address(status.observed),
                )
            elif status.last_error and (before is None or before[1] != status.last_error):
                self.console.status(
                    f"beacon {status.beacon}: {status.last_error} (retrying)",
                    event="beacon",
                    beacon=status.beacon,
                    state=status.state,
                    error=status.last_error,
                )
            elif before is None and status.state == "connecting":
                self.console.status(f"beacon {status.beacon}: connecting", event="beacon",
                                    beacon=status.beacon, state="connecting")
        stats = self.peer.stats
        introductions = stats.introductions + stats.lan_sightings
        if introductions > self._introductions:
            self._introductions = introductions
            via = "on the LAN" if stats.lan_sightings and not stats.introductions else "by the beacon"
            action = "relay only (UDP blocked)" if udp_unreachable(self.peer._clients) else "punching through NATs"  # noqa: SLF001
            self.console.status(f"introduced to a peer {via}: {action}", event="introduced")
        if stats.relay_requests > self._relay_requests:
            self._relay_requests = stats.relay_requests
            if udp_unreachable(self.peer._clients):  # noqa: SLF001
                self.console.status("no beacon reachable over UDP (TLS/TCP only): punching is pointless, "
                                    "asking the beacon to relay at once", event="relay_requested", udp=False)
            else:
                self.console.status("no direct path yet: asking the beacon to relay", event="relay_requested")
        if stats.relay_grants > self._relay_grants:
            self._relay_grants = stats.relay_grants
            self.console.status("relay granted by the beacon", event="relay_granted")


def explain_connect_error(exc: ConnectError, target: str, our_id: str, *, secret: bool) -> str:
    """One line: what went wrong, and what the user can check."""
    report = exc.report or {}
    beacons = report.get("beacons") or []
    reached = [b for b in beacons if isinstance(b, dict) and b.get("state") == "connected"]
    failures = [str(f) for f in report.get("failures") or []]
    refused = next((f for f in reversed(failures) if "refused us" in f or "not expected here" in f), None)
    if refused is not None:
        detail = refused.split("refused us:", 1)[1].strip() if "refused us:" in refused else refused
        return (f"{short_id(target)} refused us ({detail}): is our peer id {our_id} in its allow list?")
    if beacons and not reached:
        errors = "; ".join(f"{b.get('beacon')}: {b.get('last_error') or b.get('state')}" for b in beacons
                           if isinstance(b, dict))
        return f"no beacon reachable ({errors}); run `discretpeer doctor`"
    full = [str(f) for f in report.get("refusals") or []]
    if full and not report.get("introductions"):
        return (f"{full[-1]}: too many connections wait on this meeting there (someone may be squatting it); "
                "it is tried again every ~10 s; another beacon in the config avoids it")
    if not report.get("introductions"):
        how = "the same --secret" if secret else f"your peer id ({our_id}) in its allow list"
        return (
            f"peer {target} not found: the beacon never introduced it. Is `discretpeer expose` running "
            f"there, on the same beacon, with {how}?"
        )
    return str(exc)


async def watch_path(conn: PeerConnection, console: Console) -> None:
    """A status line each time the connection's path changes (relay -> direct, NAT rebinding)."""
    closed = asyncio.ensure_future(conn.wait_closed())
    try:
        while not conn.closed:
            change = asyncio.ensure_future(conn.path_changes.get())
            await asyncio.wait({change, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not change.done():
                change.cancel()
                return
            remote = format_address(conn.remote_address)
            console.status(f"{short_id(conn.peer_id)}: path is now {change.result()} ({remote})",
                           event="path", peer=conn.peer_id, path=change.result(), remote=remote)
    finally:
        closed.cancel()


class PeerLink:
    """The one peer connection of ``forward``/``pipe``: connects, reports, reconnects."""

    def __init__(self, peer: Peer, target: str, settings: Settings, console: Console) -> None:
        self.peer = peer
        self.target = target
        self.settings = settings
        self.console = console
        self._conn: PeerConnection | None = None
        self._ready = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()
        self.connects = 0

    @property
    def connection(self) -> PeerConnection | None:
        conn = self._conn
        return conn if conn is not None and not conn.closed else None

    async def connect_once(self) -> PeerConnection:
        """Raises ConnectError with an explained message."""
        how = "our shared secret" if self.settings.secret else "our two peer ids"
        where = ", ".join(str(b) for b in self.settings.beacons) or "the LAN"
        self.console.status(f"looking for {short_id(self.target)} via {where} (meeting derived from {how})",
                            event="connecting", peer=self.target)
        try:
            if self.settings.secret:
                conn = await self.peer.connect(self.settings.secret, expect=self.target, timeout=self.settings.timeout)
            else:
                conn = await self.peer.connect_to_peer(self.target, timeout=self.settings.timeout)
        except ConnectError as exc:
            raise ConnectError(
                explain_connect_error(exc, self.target, self.peer.peer_id, secret=bool(self.settings.secret)),
                exc.report,
            ) from None
        self.connects += 1
        self._conn = conn
        self._ready.set()
        info = describe_connection(conn)
        self.console.result(
            f"connected to {short_id(conn.peer_id)}: path {conn.path} ({info['remote']}), round trip {ms(conn.rtt)}",
            event="connected",
            **info,
        )
        task = asyncio.ensure_future(watch_path(conn, self.console))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return conn

    async def maintain(self) -> None:
        """Keep a connection up forever (forward): reconnect with backoff when it drops."""
        delay = RECONNECT_INITIAL
        while True:
            try:
                conn = await self.connect_once()
            except ConnectError as exc:
                self.console.error(str(exc), event="connect_failed")
                self.console.status(f"retrying in {delay:g}s", event="retry", delay=delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_CAP, delay * 2)
                continue
            delay = RECONNECT_INITIAL
            await conn.wait_closed()
            self._ready.clear()
            self.console.warn(f"connection to {short_id(self.target)} lost ({conn.close_reason}); reconnecting",
                              event="disconnected", reason=conn.close_reason)

    async def get(self, timeout: float) -> PeerConnection:
        """The current connection, waiting up to ``timeout`` for one."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            conn = self.connection
            if conn is not None:
                return conn
            self._ready.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise ConnectionError(f"not connected to {short_id(self.target)}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)


def stop_event(*signals: signal.Signals) -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (and any others given): the clean way out of a server loop."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals or (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    return event
