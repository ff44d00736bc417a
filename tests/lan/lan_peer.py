"""A discretpeer Peer with LAN discovery and no beacon, run inside a lab namespace (JSON lines out).

usage: lan_peer.py '{"identity": PATH, "meeting": "...", "expect": PEER_ID, "role": "dial"|"serve",
                     "timeout": 10, "beacons": []}'
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import structlog

from discretpeer import ConnectError, Identity, Peer


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def main(config: dict) -> None:
    identity = Identity.load(config["identity"])
    started = time.monotonic()
    async with Peer(identity, config.get("beacons", []), lan=True) as peer:
        emit(event="ready", peer_id=peer.peer_id, port=peer.port)
        try:
            conn = await peer.connect(config["meeting"], expect=config["expect"], timeout=config.get("timeout", 10))
        except ConnectError as exc:
            emit(event="failed", error=str(exc), lan_sightings=peer.stats.lan_sightings)
            return
        emit(
            event="connected",
            peer_id=conn.peer_id,
            path=conn.path,
            remote=list(conn.remote_address),
            ms_from_start=round(1000 * (time.monotonic() - started), 1),
            ms_from_sighting=None if conn.time_to_connect is None else round(1000 * conn.time_to_connect, 1),
            lan_sightings=peer.stats.lan_sightings,
        )
        if config["role"] == "dial":
            reader, writer = await conn.open_stream()
            writer.write(b"hello over the lan")
            writer.write_eof()
            emit(event="reply", data=(await asyncio.wait_for(reader.read(), 10)).decode())
        else:
            reader, writer = await conn.accept_stream()
            writer.write((await reader.read())[::-1])
            writer.write_eof()
            await asyncio.sleep(0.5)
        emit(event="done")
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    asyncio.run(main(json.loads(sys.argv[1])))
