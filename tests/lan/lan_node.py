"""A LanDiscovery peer driven over stdin/stdout (JSON lines); run inside a lab namespace.

Usage: lan_node.py '{"tokens": [hex...], "interfaces": null, "ip_version": "all", "max_services": 256}'

Events on stdout: ready, found, stats, closed. Commands on stdin: {"cmd": "tokens", "tokens": [...]},
{"cmd": "stats"}, {"cmd": "close"}. Elapsed times ``t`` are seconds since ``start()`` was called.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time

from discretpeer.lan import LanDiscovery, LanSighting


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def main(config: dict) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if config.get("ip_version") == "v6" else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("::" if config.get("ip_version") == "v6" else "0.0.0.0", 0))
    port = sock.getsockname()[1]
    instance = bytes.fromhex(config["instance"]) if "instance" in config else os.urandom(16)
    found: list[LanSighting] = []
    started = 0.0

    def on_found(sighting: LanSighting) -> None:
        found.append(sighting)
        emit(
            ev="found",
            t=round(time.monotonic() - started, 4),
            token=sighting.token.hex(),
            instance=sighting.instance.hex(),
            addresses=[[a.host, a.port] for a in sighting.addresses],
        )

    max_lag = 0.0

    async def watch_lag() -> None:
        nonlocal max_lag
        while True:
            before = loop.time()
            await asyncio.sleep(0.02)
            max_lag = max(max_lag, loop.time() - before - 0.02)

    lag_task = asyncio.create_task(watch_lag())
    lan = LanDiscovery(
        port=port,
        instance=instance,
        on_found=on_found,
        interfaces=config.get("interfaces"),
        ip_version=config.get("ip_version", "all"),
        max_services=config.get("max_services", 256),
    )
    await lan.set_tokens(bytes.fromhex(t) for t in config.get("tokens", []))
    started = time.monotonic()  # discovery times are measured from start()
    await lan.start()
    emit(
        ev="ready",
        t=round(time.monotonic() - started, 4),
        instance=instance.hex(),
        port=port,
        service=lan.service_name,
        published=lan.published_addresses,
    )

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "tokens":
            await lan.set_tokens(bytes.fromhex(t) for t in command["tokens"])
            emit(ev="tokens_set")
        elif command["cmd"] == "stats":
            zc = lan._aiozc.zeroconf if lan._aiozc is not None else None
            emit(
                ev="stats",
                tracked=len(lan.table),
                pending=len(lan._pending),
                queued=lan._queue.qsize(),
                found=len(found),
                table=lan.table.stats,
                lan=lan.stats,
                max_lag=round(max_lag, 4),
                zc_cache=sum(len(v) for v in zc.cache.cache.values()) if zc is not None else 0,
            )
            max_lag = 0.0
        elif command["cmd"] == "close":
            break
    await lan.close()
    lag_task.cancel()
    emit(ev="closed")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
