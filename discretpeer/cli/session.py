"""Shared pieces of the networked commands: the Peer, progress lines, the link to one peer."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from typing import Any

from discretpeer.beacon_client import udp_unreachable
from discretpeer.config import ConfigError
from discretpeer.connection import PeerConnection
from discretpeer.errors import ConnectError
from discretpeer.identity import Identity
from discretpeer.path_mtu import AIOQUIC_MAX_DATAGRAM
from discretpeer.peer import Peer
from discretpeer.tasks import cancel_and_wait, wait_for

from . import output
from .output import Console, ms, short_id
from .settings import Settings, load_identity

RECONNECT_INITIAL = 1.0
RECONNECT_CAP = 30.0
PIN_CHECK_INTERVAL = 0.05
_PIN_TEXT = re.compile(r"certificate hash is (\S+), pinned (\S+)$")


class PinFailure(ConnectError):
    """Every configured beacon presented a certificate that is not the pinned one: retrying cannot
    help (the pin or the address is wrong), so the command stops at once."""


def beacon_error_text(beacon: str, error: str) -> str:
    """A beacon's last error without the beacon's name repeated (the caller names it once)."""
    for prefix in (f"beacon {beacon} ", f"beacon {beacon}: "):
        if error.startswith(prefix):
            error = error[len(prefix) :]
    match = _PIN_TEXT.search(error)
    if match:
        return (
            f"its certificate hash is {match.group(1)} but the pinned hash is {match.group(2)} "
            "(a wrong cert_hash, or another server at that address)"
        )
    return error


def pin_failure(peer: Peer, settings: Settings) -> str | None:
    """The one-line reason when no beacon can ever be used because every one of them failed its pin
    (and the LAN, which needs no beacon, is off); None while any beacon may still work."""
    statuses = peer.beacon_status
    if settings.lan or not statuses:
        return None
    if any(status.pin_mismatches == 0 or status.state == "connected" for status in statuses):
        return None
    parts = [
        f"beacon {s.beacon}: {beacon_error_text(s.beacon, s.last_error or 'certificate mismatch')}" for s in statuses
    ]
    return "; ".join(parts) + "; fix the cert_hash (the beacon prints it on start) and check with `discretpeer doctor`"


async def watch_pins(peer: Peer, settings: Settings) -> None:
    """Raises :class:`PinFailure` as soon as :func:`pin_failure` has a reason (runs until cancelled)."""
    while True:
        reason = pin_failure(peer, settings)
        if reason is not None:
            raise PinFailure(reason)
        await asyncio.sleep(PIN_CHECK_INTERVAL)


async def unless_pins_fail(peer: Peer, settings: Settings, work: Any) -> Any:
    """Await ``work`` (a coroutine), stopping it with :class:`PinFailure` if every beacon fails its pin."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch_pins(peer, settings))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            watcher.result()  # raises PinFailure
        return task.result()
    finally:
        await cancel_and_wait(task, watcher)


def require_meeting_place(settings: Settings) -> None:
    """A beacon or the LAN: without either no peer can ever be met (checked before anything is
    created, e.g. the identity of a fresh install)."""
    if not settings.beacons and not settings.lan:
        raise ConfigError(
            "no beacon configured (beacons = [...] in the config file, DISCRETPEER_BEACONS or "
            "--beacon HOST:PORT=CERT_HASH) and LAN discovery is off (--lan)"
        )


def open_identity(settings: Settings, console: Console) -> Identity:
    """Load (or create, mode 0600) the identity; says so when it was just created."""
    identity, created = load_identity(settings)
    if created:
        console.status(f"created a new identity in {settings.identity_path}", event="identity_created")
    return identity


def make_peer(settings: Settings, identity: Identity) -> Peer:
    require_meeting_place(settings)
    return Peer(
        identity,
        settings.beacons,
        host=settings.udp_host,
        port=settings.udp_port,
        lan=settings.lan,
        relay=settings.relay,
        direct=settings.direct,
        tuning=settings.tuning,
        max_datagram_size=settings.max_datagram_size or AIOQUIC_MAX_DATAGRAM,
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
        "datagram_size": conn.datagram_size,  # what this side sends per datagram now
        "receive_window": conn.receive_window,  # bytes per stream towards this side (--tuning path=...)
    }


class Progress:
    """Turns the peer's beacon states and counters into status lines as they change."""

    def __init__(
        self, peer: Peer, console: Console, *, interval: float = 0.1, settings: Settings | None = None
    ) -> None:
        self.peer = peer
        self.console = console
        self.settings = settings
        self.interval = interval
        self._beacons: dict[str, tuple[str, str | None]] = {}
        self._introductions = 0
        self._relay_requests = 0
        self._relay_grants = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def relay_only(self) -> bool:
        return self.settings is not None and not self.settings.direct

    def start(self) -> None:
        self.console.before = self.poll
        self.poll()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.console.before == self.poll:
            self.console.before = None
        await cancel_and_wait(self._task)

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
                if self.settings is not None and pin_failure(self.peer, self.settings) is not None:
                    continue  # final: the command stops with this as its error line
                self.console.status(
                    f"beacon {status.beacon}: {beacon_error_text(status.beacon, status.last_error)} (retrying)",
                    event="beacon",
                    beacon=status.beacon,
                    state=status.state,
                    error=status.last_error,
                )
            elif before is None and status.state == "connecting":
                self.console.status(
                    f"beacon {status.beacon}: connecting", event="beacon", beacon=status.beacon, state="connecting"
                )
        stats = self.peer.stats
        introductions = stats.introductions + stats.lan_sightings
        if introductions > self._introductions:
            self._introductions = introductions
            via = "on the LAN" if stats.lan_sightings and not stats.introductions else "by the beacon"
            if self.relay_only:
                what = "relaying only (--relay-only)"
            elif udp_unreachable(self.peer._clients):  # noqa: SLF001 - the CLI reads the peer's beacon clients for its progress line
                what = "relay only (UDP blocked)"
            else:
                what = "punching through NATs"
            self.console.status(f"introduced to a peer {via}: {what}", event="introduced")
        if stats.relay_requests > self._relay_requests:
            self._relay_requests = stats.relay_requests
            if self.relay_only:
                self.console.status("asking the beacon to relay", event="relay_requested")
            elif udp_unreachable(self.peer._clients):  # noqa: SLF001 - the CLI reads the peer's beacon clients for its progress line
                self.console.status(
                    "no beacon reachable over UDP (TLS/TCP only): punching is pointless, "
                    "asking the beacon to relay at once",
                    event="relay_requested",
                    udp=False,
                )
            else:
                self.console.status("no direct path yet: asking the beacon to relay", event="relay_requested")
        if stats.relay_grants > self._relay_grants:
            self._relay_grants = stats.relay_grants
            self.console.status("relay granted by the beacon", event="relay_granted")


def explain_connect_error(exc: ConnectError, target: str, our_id: str, *, secret: bool) -> str:
    """One line: what went wrong, and what the user can check."""
    report: dict[str, Any] = exc.report or {}
    beacons = report.get("beacons") or []
    reached = [b for b in beacons if isinstance(b, dict) and b.get("state") == "connected"]
    failures = [str(f) for f in report.get("failures") or []]
    refused = next((f for f in reversed(failures) if "refused us" in f or "not expected here" in f), None)
    if refused is not None:
        detail = refused.split("refused us:", 1)[1].strip() if "refused us:" in refused else refused
        return f"{short_id(target)} refused us ({detail}): is our peer id {our_id} in its allow list?"
    if beacons and not reached:
        errors = "; ".join(
            f"{b.get('beacon')}: {beacon_error_text(str(b.get('beacon')), str(b.get('last_error') or b.get('state')))}"
            for b in beacons
            if isinstance(b, dict)
        )
        return f"no beacon reachable ({errors}); run `discretpeer doctor`"
    full = [str(f) for f in report.get("refusals") or []]
    if full and not report.get("introductions"):
        return (
            f"{full[-1]}: too many connections wait on this meeting there (someone may be squatting it); "
            "it is tried again every ~10 s; another beacon in the config avoids it"
        )
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
            console.status(
                f"{short_id(conn.peer_id)}: path is now {change.result()} ({remote})",
                event="path",
                peer=conn.peer_id,
                path=change.result(),
                remote=remote,
            )
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
        self._ready = asyncio.Event()  # set when an attempt settles (connected or failed)
        self._retry_now = asyncio.Event()  # a client arrived while we wait to retry
        self._watchers: set[asyncio.Task[None]] = set()
        self.connects = 0
        self.failure: str | None = None  # why the last attempt failed (while waiting to retry)

    @property
    def connection(self) -> PeerConnection | None:
        conn = self._conn
        return conn if conn is not None and not conn.closed else None

    async def connect_once(self) -> PeerConnection:
        """Raises ConnectError with an explained message."""
        how = "our shared secret" if self.settings.secret else "our two peer ids"
        where = ", ".join(str(b) for b in self.settings.beacons) or "the LAN"
        self.console.status(
            f"looking for {short_id(self.target)} via {where} (meeting derived from {how})",
            event="connecting",
            peer=self.target,
        )
        try:
            if self.settings.secret:
                attempt = self.peer.connect(self.settings.secret, expect=self.target, timeout=self.settings.timeout)
            else:
                attempt = self.peer.connect_to_peer(self.target, timeout=self.settings.timeout)
            conn = await unless_pins_fail(self.peer, self.settings, attempt)
        except PinFailure:
            raise
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
            except PinFailure:
                raise  # final: retrying cannot help
            except ConnectError as exc:
                self.failure = str(exc)
                self._ready.set()  # clients waiting for this attempt are told at once
                self.console.error(str(exc), event="connect_failed")
                self.console.status(f"retrying in {delay:g}s", event="retry", delay=delay)
                self._retry_now.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(self._retry_now.wait(), delay)
                self.failure = None
                delay = min(RECONNECT_CAP, delay * 2)
                continue
            delay = RECONNECT_INITIAL
            await conn.wait_closed()
            self._ready.clear()
            self.console.warn(
                f"connection to {short_id(self.target)} lost ({conn.close_reason}); reconnecting",
                event="disconnected",
                reason=conn.close_reason,
            )

    async def get(self, timeout: float) -> PeerConnection:
        """The current connection, waiting up to ``timeout`` for one. Raises ConnectionError at once
        (with the reason) when the last attempt failed and we wait to retry; the retry starts now."""
        deadline = asyncio.get_running_loop().time() + timeout
        waited = False
        while True:
            conn = self.connection
            if conn is not None:
                return conn
            if self.failure is not None:
                if not waited:  # (those who waited for the attempt that just failed do not hurry the next)
                    self._retry_now.set()
                raise ConnectionError(self.failure)
            waited = True
            self._ready.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise ConnectionError(f"not connected to {short_id(self.target)}")
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._ready.wait(), remaining)


def stop_event(*signals: signal.Signals) -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (and any others given): the clean way out of a server loop."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if sig == signal.SIGINT:
            output.interrupted = True  # main() exits 130
        event.set()

    for sig in signals or (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    return event
