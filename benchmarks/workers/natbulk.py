"""One stream between two discretpeer peers inside NAT-lab hosts (run by ``benchmarks.run``'s
``natbulk``). Standalone on purpose: started as ``python -I natbulk.py CONFIG`` by the installed
venv's interpreter, so only the pip-installed package is importable.

CONFIG (JSON): {"role": "send"|"sink", "beacons": [...], "meeting": M, "expect": PEER_ID or null,
"identity": PATH, "direct": bool, "dgram": N, "window": N, "size": N, "repeat": K, "timeout": T}.
JSON lines on stdout: connected {path, datagram_size, rtt}, sent {seconds, datagram_size}, done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        total += len(data)
    writer.write(b"done %d" % total)
    writer.write_eof()


async def send(conn, size: int) -> float:
    reader, writer = await conn.open_stream()
    payload = os.urandom(65536)
    started = time.perf_counter()
    sent = 0
    while sent < size:
        chunk = payload[: min(len(payload), size - sent)]
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    if answer != b"done %d" % size:
        raise RuntimeError(f"receiver answered {answer[:40]!r}")
    return time.perf_counter() - started


async def main(config: dict) -> None:
    from discretpeer import Identity, Peer, Tuning

    identity = Identity.load(config["identity"])
    options = {"max_datagram_size": config["dgram"]} if config.get("dgram") else {}
    window = config.get("window")
    tuning = Tuning(**({"max_data": 4 * window, "max_stream_data": window} if window else {}))
    if config.get("cc"):
        tuning = dataclasses.replace(tuning, congestion_control=config["cc"])
    async with Peer(identity, config["beacons"], direct=config.get("direct", True), tuning=tuning, **options) as peer:
        conn = await peer.connect(config["meeting"], expect=config["expect"], timeout=config.get("timeout", 30))
        await asyncio.sleep(1.5)  # path-MTU search over (a few RTTs)
        emit(event="connected", path=conn.path, datagram_size=conn.datagram_size, rtt=conn.rtt)
        if config["role"] == "sink":
            while True:
                reader, writer = await conn.accept_stream()
                asyncio.ensure_future(sink(reader, writer))
        for _ in range(config.get("repeat", 1)):
            seconds = await asyncio.wait_for(send(conn, config["size"]), 240)
            emit(event="sent", seconds=seconds, bytes=config["size"], datagram_size=conn.datagram_size, path=conn.path)
        emit(event="done")


if __name__ == "__main__":
    try:
        import uvloop

        use_uvloop = bool(json.loads(sys.argv[1]).get("uvloop"))
    except ImportError:
        use_uvloop = False
    cfg = json.loads(sys.argv[1])
    if use_uvloop:
        import uvloop

        uvloop.run(main(cfg))
    else:
        asyncio.run(main(cfg))
