"""``discretpeer expose``: let allowed peers reach local TCP services through this device."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from discretpeer.cli.tunnel import FrameType, Request, Status, TunnelError, encode_response
from discretpeer.config import ConfigError
from discretpeer.connection import PeerConnection
from discretpeer.peer import Peer
from discretpeer.tasks import TaskSet, wait_for
from discretpeer.tokens import pair_meeting

from .control import ControlServer
from .output import Console, short_id
from .session import (
    Progress,
    describe_beacons,
    describe_connection,
    make_peer,
    open_identity,
    require_meeting_place,
    stop_event,
    watch_path,
    watch_pins,
)
from .settings import Service, Settings, load_settings
from .splice import Splice, TcpSide, Traffic, read_frame

REQUEST_TIMEOUT = 10.0
SERVICE_CONNECT_TIMEOUT = 10.0
MAX_TUNNELS_PER_CONNECTION = 256
MAX_TUNNELS = 1024
CLOSED_HISTORY = 20


@dataclass
class ConnectionRecord:
    conn: PeerConnection
    since: float = field(default_factory=time.time)
    tunnels_open: int = 0
    tunnels_total: int = 0
    refused: int = 0
    traffic: Traffic = field(default_factory=Traffic)  # sent: to the peer; received: from it
    closed_at: float | None = None
    close_reason: str | None = None

    def snapshot(self) -> dict[str, Any]:
        info = describe_connection(self.conn)
        return {
            **info,
            "since": round(self.since, 3),
            "tunnels_open": self.tunnels_open,
            "tunnels_total": self.tunnels_total,
            "refused": self.refused,
            "bytes_from_peer": self.traffic.received,
            "bytes_to_peer": self.traffic.sent,
            "closed": self.closed_at is not None,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
        }


class Exposer:
    def __init__(
        self, peer: Peer, services: dict[int, Service], allow: list[str], settings: Settings, console: Console
    ) -> None:
        self.peer = peer
        self.services = services
        self.allow = allow
        self.settings = settings
        self.console = console
        self.started = time.time()
        self.records: dict[PeerConnection, ConnectionRecord] = {}
        self.closed: collections.deque[ConnectionRecord] = collections.deque(maxlen=CLOSED_HISTORY)
        self.tunnels_open = 0
        self.tunnels_total = 0
        self.refused = 0
        self.traffic = Traffic()
        self._tasks = TaskSet()
        self._spawn = self._tasks.spawn

    async def accept_loop(self) -> None:
        async for conn in self.peer.incoming():
            self._spawn(self.serve_connection(conn))

    async def serve_connection(self, conn: PeerConnection) -> None:
        record = ConnectionRecord(conn, traffic=Traffic(parent=self.traffic))
        self.records[conn] = record
        info = describe_connection(conn)
        self.console.status(
            f"peer {short_id(conn.peer_id)} connected: path {conn.path} ({info['remote']})",
            event="peer_connected",
            **info,
        )
        self._spawn(watch_path(conn, self.console))
        try:
            while True:
                try:
                    reader, writer = await conn.accept_stream()
                except ConnectionError:
                    break
                self._spawn(self.serve_stream(record, reader, writer))
        finally:
            if not conn.closed:  # we are stopping (this task was cancelled): say so to the peer too
                conn.close("the exposing side is stopping")
            reason = conn.close_reason or "closed"
            record.closed_at = time.time()
            record.close_reason = reason
            self.records.pop(conn, None)
            self.closed.append(record)
            self.console.status(
                f"peer {short_id(conn.peer_id)} disconnected ({reason})",
                event="peer_disconnected",
                peer=conn.peer_id,
                reason=reason,
            )

    def _choose(self, request: Request, peer_id: str) -> tuple[Service | None, Status, str]:
        allowed = self.settings.ports_for(peer_id)
        # a peer limited to some ports sees only those: the others do not exist for it
        services = self.services if allowed is None else {p: s for p, s in self.services.items() if p in allowed}
        ports = ", ".join(str(p) for p in sorted(services)) or "none for you"
        if request.port == 0:
            if len(services) == 1:
                return next(iter(services.values())), Status.OK, ""
            return None, Status.AMBIGUOUS_PORT, f"several ports are exposed ({ports}): choose one with --port"
        service = services.get(request.port)
        if service is None:
            return None, Status.NOT_EXPOSED, f"port {request.port} is not exposed (exposed: {ports})"
        return service, Status.OK, ""

    async def serve_stream(
        self, record: ConnectionRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = record.conn
        peer = short_id(conn.peer_id)

        def refuse(status: Status, message: str) -> None:
            record.refused += 1
            self.refused += 1
            with contextlib.suppress(Exception):
                writer.write(encode_response(status, message))
                writer.write_eof()
            self.console.warn(
                f"peer {peer}: tunnel refused: {status.name}: {message}",
                event="tunnel_refused",
                peer=conn.peer_id,
                status=status.name,
                message=message,
            )

        try:
            frame = await read_frame(reader, FrameType.REQUEST, REQUEST_TIMEOUT)
        except TunnelError as exc:
            refuse(exc.status, str(exc))
            return
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            with contextlib.suppress(Exception):
                writer.write_eof()
            return
        assert isinstance(frame, Request)
        service, status, message = self._choose(frame, conn.peer_id)
        if service is None:
            refuse(status, message)
            return
        if record.tunnels_open >= MAX_TUNNELS_PER_CONNECTION or self.tunnels_open >= MAX_TUNNELS:
            refuse(Status.BUSY, f"too many tunnels open (limit {MAX_TUNNELS_PER_CONNECTION} per peer)")
            return
        try:
            tcp_reader, tcp_writer = await wait_for(
                asyncio.open_connection(service.host, service.port), SERVICE_CONNECT_TIMEOUT
            )
        except ConnectionRefusedError:
            refuse(Status.REFUSED, f"connection to {service} refused (is the service running?)")
            return
        except TimeoutError:
            refuse(Status.UNREACHABLE, f"connection to {service} timed out")
            return
        except OSError as exc:
            refuse(Status.UNREACHABLE, f"cannot connect to {service}: {exc.strerror or exc}")
            return
        writer.write(encode_response(Status.OK))
        record.tunnels_open += 1
        record.tunnels_total += 1
        self.tunnels_open += 1
        self.tunnels_total += 1
        traffic = Traffic(parent=record.traffic)
        self.console.status(
            f"peer {peer}: tunnel to {service} opened", event="tunnel_opened", peer=conn.peer_id, service=str(service)
        )
        try:
            splice = Splice(
                TcpSide(tcp_reader, tcp_writer), reader, writer, conn, traffic, closing_after_eof_is_clean=True
            )
            error = await splice.run()
        finally:
            record.tunnels_open -= 1
            self.tunnels_open -= 1
        self.console.status(
            f"peer {peer}: tunnel to {service} closed ({traffic.received} B in, {traffic.sent} B out"
            + (f"; {error}" if error else "")
            + ")",
            event="tunnel_closed",
            peer=conn.peer_id,
            service=str(service),
            bytes_from_peer=traffic.received,
            bytes_to_peer=traffic.sent,
            error=error,
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "expose",
            "pid": os.getpid(),
            "peer_id": self.peer.peer_id,
            "started": round(self.started, 3),
            "uptime": round(time.time() - self.started, 1),
            "exposed": [{"port": port, "target": str(service)} for port, service in sorted(self.services.items())],
            "allowed": list(self.allow),
            "allowed_ports": {peer: sorted(ports) for peer, ports in self.settings.allow_ports.items()},
            "meeting": "secret" if self.settings.secret else "peer ids",
            "beacons": describe_beacons(self.peer),
            "connections": [record.snapshot() for record in self.records.values()],
            "recently_closed": [record.snapshot() for record in self.closed],
            "totals": {
                "tunnels_open": self.tunnels_open,
                "tunnels_total": self.tunnels_total,
                "refused": self.refused,
                "bytes_from_peers": self.traffic.received,
                "bytes_to_peers": self.traffic.sent,
            },
            "stats": {k: v for k, v in dataclasses.asdict(self.peer.stats).items() if k != "connect_times"},
        }

    async def close(self) -> None:
        await self._tasks.cancel_all()


async def run_expose(settings: Settings, args: Any, console: Console) -> int:
    services = settings.services(args.ports, args.host)
    if not services:
        raise ConfigError(
            "nothing to expose: give a PORT (e.g. `discretpeer expose 22`) or expose = [...] in the config"
        )
    if not settings.allow:
        raise ConfigError("nobody is allowed: give --allow PEER_ID (repeatable) or allow = [...] in the config")
    require_meeting_place(settings)
    identity = open_identity(settings, console)
    exposers: list[Exposer] = []
    control = ControlServer(
        settings.control_path, lambda: exposers[0].snapshot() if exposers else {"pid": os.getpid(), "starting": True}
    )
    await control.start()  # first: a second expose on the same socket stops before touching the network
    try:
        async with make_peer(settings, identity) as peer:
            exposer = Exposer(peer, services, settings.allow, settings, console)
            exposers.append(exposer)
            await _serve(peer, exposer, settings, services, console, args)
    finally:
        await control.close()
    return 0


async def _listen(peer: Peer, secret: str | None, allow: list[str]) -> None:
    if secret:
        await peer.listen(secret, expect=set(allow))
    else:
        await peer.listen_for_peers(allow)


async def _reload(peer: Peer, exposer: Exposer, args: Any, console: Console) -> None:
    """SIGHUP: read the config again and apply its allow list and exposed ports without a restart
    (connections of peers still allowed go on; those of removed peers are closed). A config
    that does not load changes nothing and says why."""
    try:
        new = load_settings(args)
        services = new.services(args.ports, args.host)
        if not new.allow:
            raise ConfigError("nobody would be allowed")
        if not services:
            raise ConfigError("nothing would be exposed")
    except ConfigError as exc:
        console.status(f"reload failed, keeping the current settings: {exc}", event="reload_failed", error=str(exc))
        return
    old = exposer.settings
    before, after = set(old.allow), set(new.allow)
    if new.secret and new.secret == old.secret:
        await peer.listen(new.secret, expect=after)  # the same meeting, a new policy
    elif new.secret != old.secret:
        if old.secret:
            await peer.unlisten(old.secret)
        else:
            for peer_id in before:
                await peer.unlisten(pair_meeting(peer.peer_id, peer_id))
        await _listen(peer, new.secret, new.allow)
    else:
        for peer_id in before - after:
            await peer.unlisten(pair_meeting(peer.peer_id, peer_id))
        await peer.listen_for_peers(sorted(after - before))
    removed = before - after
    for conn in list(exposer.records):
        if conn.peer_id in removed:
            conn.close("no longer allowed")
    exposer.settings, exposer.allow, exposer.services = new, new.allow, services
    console.result(
        f"reloaded: {len(new.allow)} allowed peer(s) (+{len(after - before)}, -{len(removed)}), "
        f"exposing {', '.join(str(port) for port in sorted(services))}",
        event="reloaded",
        allowed=new.allow,
        added=sorted(after - before),
        removed=sorted(removed),
        exposed={port: str(service) for port, service in services.items()},
    )


async def _serve(
    peer: Peer, exposer: Exposer, settings: Settings, services: dict[int, Service], console: Console, args: Any
) -> None:
    stop = stop_event()
    reload = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.set)
    progress = Progress(peer, console, settings=settings)
    try:
        await _listen(peer, settings.secret, settings.allow)
        progress.start()
        listing = ", ".join(f"{port} -> {service}" for port, service in sorted(services.items()))
        console.result(
            f"exposing {listing} to {len(settings.allow)} allowed peer(s); this device's peer id: {peer.peer_id}",
            event="exposing",
            peer_id=peer.peer_id,
            exposed={port: str(service) for port, service in services.items()},
            allowed=settings.allow,
            control=str(settings.control_path),
        )
        accept = asyncio.ensure_future(exposer.accept_loop())
        stopped = asyncio.ensure_future(stop.wait())
        pins = asyncio.ensure_future(watch_pins(peer, settings))  # every beacon failing its pin is final
        while True:
            reloading = asyncio.ensure_future(reload.wait())
            await asyncio.wait({accept, stopped, reloading, pins}, return_when=asyncio.FIRST_COMPLETED)
            if not reloading.done():
                reloading.cancel()
                break
            reload.clear()
            await _reload(peer, exposer, args, console)
        stopped.cancel()
        accept_done = accept.done()
        accept.cancel()
        pins.cancel()
        if pins.done() and not pins.cancelled():
            pins.result()  # raises PinFailure
        if accept_done:
            accept.result()  # re-raises what ended the accept loop
        console.status("stopping", event="stopping")
    finally:
        await progress.stop()
        await exposer.close()
