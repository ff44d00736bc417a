"""``discretpeer forward`` (a local TCP port) and ``discretpeer pipe`` (stdin/stdout) to a service
exposed by another peer: one peer connection, one QUIC stream per TCP connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from discretpeer.cli.tunnel import FrameType, Response, TunnelError, encode_request
from discretpeer.connection import PeerConnection
from discretpeer.errors import ConnectError
from discretpeer.tasks import cancel_and_wait

from .control import ControlServer
from .output import Console, short_id
from .session import (
    PeerLink,
    Progress,
    describe_beacons,
    describe_connection,
    make_peer,
    open_identity,
    require_meeting_place,
    stop_event,
)
from .settings import Settings
from .splice import RESET_GRACE, Splice, StdioSide, TcpSide, Traffic, read_frame

RESPONSE_TIMEOUT = 15.0


class TunnelRefused(Exception):
    pass


async def open_tunnel(
    conn: PeerConnection, port: int, local: Any, traffic: Traffic, *, end_on_remote_eof: bool = False
) -> Splice:
    """Open a stream, ask for ``port``, start sending local data at once (optimistic), wait for
    the answer. Returns the splice to run, or raises TunnelRefused with a one-line reason."""
    reader, writer = await conn.open_stream()
    writer.write(encode_request(port))
    splice = Splice(local, reader, writer, conn, traffic, end_on_remote_eof=end_on_remote_eof)
    up = splice.start_up()
    try:
        frame = await read_frame(reader, FrameType.RESPONSE, RESPONSE_TIMEOUT)
    except TunnelError as exc:
        reason = f"the other side answered something that is not a tunnel response ({exc})"
    except asyncio.IncompleteReadError:
        reason = (
            f"peer connection lost ({conn.close_reason})"
            if conn.closed
            else "the other side closed the tunnel without answering"
        )
    except TimeoutError:
        reason = f"no answer to the tunnel request within {RESPONSE_TIMEOUT:g}s"
    else:
        assert isinstance(frame, Response)
        if frame.ok:
            return splice
        reason = f"{short_id(conn.peer_id)} refused the tunnel: {frame.describe()}"
    await cancel_and_wait(up)
    with contextlib.suppress(Exception):
        writer.write_eof()
    raise TunnelRefused(reason)


class ForwardState:
    """What ``status --control`` shows of a running forward."""

    def __init__(self, peer: Any, link: PeerLink, target: str, remote_port: int) -> None:
        self.peer, self.link, self.target, self.remote_port = peer, link, target, remote_port
        self.started = time.time()
        self.listening = ""
        self.tunnels_open = 0
        self.tunnels_total = 0
        self.failed = 0
        self.traffic = Traffic()

    def snapshot(self) -> dict[str, Any]:
        conn = self.link.connection
        return {
            "kind": "forward",
            "pid": os.getpid(),
            "peer_id": self.peer.peer_id,
            "uptime": round(time.time() - self.started, 1),
            "listening": self.listening,
            "to": self.target,
            "remote_port": self.remote_port,
            "beacons": describe_beacons(self.peer),
            "connection": describe_connection(conn) if conn is not None else None,
            "connects": self.link.connects,
            "totals": {
                "tunnels_open": self.tunnels_open,
                "tunnels_total": self.tunnels_total,
                "failed": self.failed,
                "bytes_to_peer": self.traffic.sent,
                "bytes_from_peer": self.traffic.received,
            },
        }


async def run_forward(settings: Settings, args: Any, console: Console) -> int:
    target = settings.resolve_peer(args.to, where="--to")
    require_meeting_place(settings)  # before creating an identity that would serve nothing
    identity = open_identity(settings, console)
    port = args.port or 0
    what = f"port {port}" if port else "its exposed port"
    states: list[ForwardState] = []
    control = None
    if getattr(args, "control", None):  # settings.control_path defaults to expose's socket: only on request
        control = ControlServer(
            settings.control_path, lambda: states[0].snapshot() if states else {"pid": os.getpid(), "starting": True}
        )
        await control.start()
    try:
        async with make_peer(settings, identity) as peer:
            link = PeerLink(peer, target, settings, console)
            state = ForwardState(peer, link, target, port)
            states.append(state)
            return await _forward(peer, link, state, args, console, settings, what)
    finally:
        if control is not None:
            await control.close()


async def _forward(
    peer: Any, link: PeerLink, state: ForwardState, args: Any, console: Console, settings: Settings, what: str
) -> int:
    target, port = state.target, state.remote_port
    progress = Progress(peer, console, settings=settings)
    count = 0
    tasks: set[asyncio.Task[Any]] = set()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        number = count
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        local = TcpSide(reader, writer, reset_grace=RESET_GRACE)
        state.tunnels_total += 1
        state.tunnels_open += 1
        try:
            try:
                conn = await link.get(settings.timeout + 1.0)  # the attempt under way settles first
            except ConnectionError as exc:
                state.failed += 1
                console.error(
                    f"connection #{number} reset: no peer connection: {exc}",
                    event="tunnel_failed",
                    number=number,
                    reason=str(exc),
                )
                await local.reset()  # RST: the client program sees an error, not an empty reply
                return
            try:
                splice = await open_tunnel(conn, port, local, Traffic(parent=state.traffic))
            except (TunnelRefused, ConnectionError) as exc:
                state.failed += 1
                console.error(
                    f"connection #{number} reset: {exc}", event="tunnel_failed", number=number, reason=str(exc)
                )
                await local.reset()
                return
            error = await splice.run()
            if error:
                console.warn(f"connection #{number}: {error}", event="tunnel_error", number=number)
        finally:
            state.tunnels_open -= 1
            if task is not None:
                tasks.discard(task)

    stop = stop_event()  # before "listening" is announced: a signal from then on is a clean stop
    try:
        server = await asyncio.start_server(client, args.bind, args.local_port)
    except OSError as exc:
        console.error(f"cannot listen on {args.bind}:{args.local_port}: {exc.strerror or exc}")
        return 1
    address = server.sockets[0].getsockname()
    state.listening = f"{address[0]}:{address[1]}"
    console.result(
        f"forwarding {address[0]}:{address[1]} to {short_id(target)} {what} (our peer id: {peer.peer_id})",
        event="listening",
        address=f"{address[0]}:{address[1]}",
        port=address[1],
        peer=target,
        remote_port=port,
    )
    progress.start()
    maintain = asyncio.ensure_future(link.maintain())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({stopped, maintain}, return_when=asyncio.FIRST_COMPLETED)
        if maintain.done():
            maintain.result()  # raises what ended it (PinFailure: every beacon fails its pin)
        console.status("stopping", event="stopping")
    finally:
        stopped.cancel()
        maintain.cancel()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(maintain, stopped, *tasks, return_exceptions=True)
        await progress.stop()
    return 0


async def run_pipe(settings: Settings, args: Any, console: Console) -> int:
    target = settings.resolve_peer(args.to, where="--to")
    require_meeting_place(settings)
    stdio = StdioSide.take()  # from here on fd 1 is stderr: only tunnel bytes reach our stdout
    identity = open_identity(settings, console)
    async with make_peer(settings, identity) as peer:
        link = PeerLink(peer, target, settings, console)
        progress = Progress(peer, console, settings=settings)
        progress.start()
        stop = stop_event(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        try:
            try:
                conn = await link.connect_once()
            except ConnectError as exc:
                console.error(str(exc), event="connect_failed")
                return 1
            finally:
                await progress.stop()
            try:
                splice = await open_tunnel(conn, args.port or 0, stdio, Traffic(), end_on_remote_eof=True)
            except (TunnelRefused, ConnectionError) as exc:
                console.error(str(exc), event="tunnel_failed")
                stdio.abort()
                return 1
            run = asyncio.ensure_future(splice.run())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not run.done():
                await cancel_and_wait(run)
                return 0
            error = run.result()
            if error:
                console.error(error, event="tunnel_error")
                return 1
            console.status(
                f"tunnel closed ({splice.traffic.sent} B sent, {splice.traffic.received} B received)",
                event="closed",
                sent=splice.traffic.sent,
                received=splice.traffic.received,
            )
            return 0
        finally:
            stdio.abort()
