"""A discretpeer Peer as an app would run it, inside a NAT-lab host (JSON lines on stdout).

usage: lab_peer.py '{"identity": PATH, "beacons": [...], "meeting": "...", "expect": PEER_ID,
                     "role": "dial"|"serve", "timeout": 20, "port": 0, "direct": true, "relay": true,
                     "report_local": true, "payload": 200000, "marker": "...", "hold": 0}'

Events: ready, connected {path, peer_id, remote, ms, dialer}, data {bytes, ok}, path {path, t},
tick {n, path} (while holding), conn_lost {error}, reconnected {path, ms}, failed {error}, done.
With ``hold`` > 0 the dialer sends a numbered line every 100 ms on one stream for that many
seconds and the server echoes it: the test sees whether the app's stream survives path changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time

from discretpeer import ConnectError, Identity, Peer, PeerConnection
from discretpeer.tuning import DEFAULT_TUNING, Tuning


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def payload_of(size: int, marker: bytes) -> bytes:
    block = marker + b"." * 100
    return (block * (size // len(block) + 1))[:size]


async def exchange(conn: PeerConnection, role: str, size: int, marker: bytes) -> None:
    """Data both ways: the dialer sends, the server echoes it reversed, the dialer checks."""
    if not size:
        return
    if role == "dial":
        reader, writer = await conn.open_stream()
        data = payload_of(size, marker)
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), 60)
        emit(event="data", bytes=len(echoed), ok=echoed == data[::-1], datagram_size=conn.datagram_size)
    else:
        reader, writer = await conn.accept_stream()
        data = await asyncio.wait_for(reader.read(), 60)
        writer.write(data[::-1])
        await writer.drain()
        writer.write_eof()
        emit(event="data", bytes=len(data), ok=data == payload_of(size, marker), datagram_size=conn.datagram_size)


async def watch_path(conn: PeerConnection, started: float) -> None:
    while True:
        path = await conn.path_changes.get()
        emit(event="path", path=path, t=round(time.monotonic() - started, 3), remote=list(conn.remote_address))


async def hold(conn: PeerConnection, role: str, seconds: float, started: float) -> None:
    watcher = asyncio.ensure_future(watch_path(conn, started))
    try:
        if role == "dial":
            reader, writer = await conn.open_stream()
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline:
                n += 1
                writer.write(f"{n}\n".encode())
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 10)
                if line != f"{n}\n".encode():
                    raise ConnectionError(f"echo {line!r} for {n}")
                if n % 10 == 0:
                    emit(event="tick", n=n, path=conn.path)
                await asyncio.sleep(0.1)
            writer.write_eof()
            emit(event="held", n=n, path=conn.path)
        else:
            reader, writer = await conn.accept_stream()
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            await asyncio.sleep(0)
            if conn.closed and conn.close_reason != "done":  # EOF because the connection died
                raise ConnectionError(f"connection lost: {conn.close_reason}")
            writer.write_eof()
            emit(event="held", path=conn.path)
    finally:
        watcher.cancel()


def slow_gateway(seconds: float) -> None:
    """A gateway whose UPnP answers only after ``seconds`` (real ones take that long at times):
    the mapping then arrives after the pair met."""
    from discretpeer.portmap.upnp import UpnpMapper

    find = UpnpMapper._find

    async def late_find(self: UpnpMapper) -> object:
        await asyncio.sleep(seconds)
        return await find(self)

    UpnpMapper._find = late_find  # type: ignore[method-assign]  # the test's slow gateway


async def main(config: dict) -> None:
    if config.get("proxy"):
        os.environ["HTTPS_PROXY"] = config["proxy"]  # as a user behind a proxy would have it
    identity = Identity.load(config["identity"])
    marker = config.get("marker", "MARKER").encode()
    if config.get("upnp_delay"):
        slow_gateway(float(config["upnp_delay"]))
    async with Peer(
        identity,
        config.get("beacons", []),
        port=config.get("port", 0),
        direct=config.get("direct", True),
        relay=config.get("relay", True),
        report_local_candidates=config.get("report_local", True),
        punch_duration=config.get("punch_duration", 6.0),
        port_mapping=config.get("port_mapping", True),
        tuning=Tuning(quic_stack=os.environ.get("DISCRETPEER_TEST_QUIC_STACK", DEFAULT_TUNING.quic_stack)),
    ) as peer:
        emit(event="ready", peer_id=peer.peer_id, port=peer.port)
        started = time.monotonic()
        try:
            conn = await peer.connect(config["meeting"], expect=config["expect"], timeout=config.get("timeout", 20))
        except ConnectError as exc:
            emit(event="failed", error=str(exc), stats=vars(peer.stats) | {"connect_times": []})
            return
        emit(
            event="connected",
            path=conn.path,
            peer_id=conn.peer_id,
            remote=list(conn.remote_address),
            dialer=conn.dialer,
            ms=None if conn.time_to_connect is None else round(1000 * conn.time_to_connect, 1),
            rtt_ms=None if conn.rtt is None else round(1000 * conn.rtt, 1),
            ms_from_start=round(1000 * (time.monotonic() - started), 1),
        )
        await exchange(conn, config["role"], config.get("payload", 0), marker)
        seconds = config.get("hold", 0)
        while seconds > 0:
            t0 = time.monotonic()
            try:
                await hold(conn, config["role"], seconds, started)
                break
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
                emit(event="conn_lost", error=f"{type(exc).__name__}: {exc}", reason=conn.close_reason)
                conn.close("reconnecting")
                seconds -= time.monotonic() - t0
                t1 = time.monotonic()
                try:
                    conn = await peer.connect(config["meeting"], expect=config["expect"], timeout=max(seconds, 5))
                except ConnectError as again:
                    emit(event="failed", error=str(again))
                    return
                emit(event="reconnected", path=conn.path, ms=round(1000 * (time.monotonic() - t1), 1))
        if config["role"] == "dial":
            await conn.aclose("done")  # the dialer ends the meeting once it has checked everything
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 30)
        mapper = peer.port_mapper
        mapping = mapper.mapping if mapper is not None else None
        emit(
            event="done",
            stats=vars(peer.stats) | {"connect_times": list(peer.stats.connect_times)},
            mapping=None if mapping is None else {"protocol": mapping.protocol, "external": list(mapping.external)},
            mapping_answers=None if mapper is None else mapper.status.answers,
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(json.loads(sys.argv[1])))
