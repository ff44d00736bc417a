"""A discretpeer ``Peer`` in its own process: bulk stream transfers and a minimal TCP forwarder.

Prints ``ready`` with its peer id. Commands:
  {"cmd": "connect", "meeting": M, "expect": PEER_ID, "timeout": T}  -> connected (path, rtt)
  {"cmd": "send", "size": N, "repeat": K, "timeout": T}             -> sent x K, then done
      (each transfer: a new stream, 64 KB writes with drain, EOF; the other side answers
      "done <bytes>" when it has read everything; time = first write .. answer)
  {"cmd": "forward", "port": P}   listen on 127.0.0.1:P, one stream per TCP connection
  {"cmd": "expose", "target": P}  streams from the other peer go to 127.0.0.1:P
Every accepted stream is a sink (answering "done <bytes>") unless ``expose`` was asked.

Variants (``--uvloop``, ``--no-pmtu``, ``--dgram``, ...) switch library measures off or change
settings by patching discretpeer's modules before the Peer exists; see benchmarks/variants.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os

from benchmarks.common import (
    CHUNK,
    commands_until_stop,
    emit,
    run_loop,
    send_stream,
    sink,
    stdin_commands,
    worker_args,
)
from benchmarks.variants import add_variant_flags, variant_tuning


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        with contextlib.suppress(Exception):
            writer.close()


async def splice(a: tuple, b: tuple) -> None:
    await asyncio.gather(pump(a[0], b[1]), pump(b[0], a[1]), return_exceptions=True)
    with contextlib.suppress(Exception):
        a[1].close()
    with contextlib.suppress(Exception):
        b[1].close()


async def main(args: argparse.Namespace) -> None:
    tuning = variant_tuning(args)
    from discretpeer import Identity, Peer

    commands = await stdin_commands()
    beacon = {"hostname": f"{args.beacon_host}:{args.beacon_port}", "cert_hash": args.fingerprint}
    hole = None
    if args.tcp_only:  # UDP to the beacon goes to a bound socket nobody reads: TLS/TCP is used
        import socket

        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(("127.0.0.1", 0))
        beacon = {**beacon, "hostname": f"127.0.0.1:{hole.getsockname()[1]}", "tcp_port": args.beacon_port}
    identity = Identity.generate()
    options = {"max_datagram_size": args.dgram} if args.dgram else {}
    peer = Peer(
        identity,
        [beacon],
        host=args.host,
        direct=not args.relay_only,
        report_local_candidates=True,
        tuning=tuning,
        **options,
    )
    await peer.start()
    emit("ready", peer_id=identity.peer_id, pid=os.getpid())
    conn = None
    expose_target: int | None = None
    tasks: set[asyncio.Task] = set()
    servers = []

    def spawn(coro) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def accept_loop() -> None:
        while True:
            reader, writer = await conn.accept_stream()
            if expose_target is None:
                spawn(sink(reader, writer))
            else:

                async def bridge(r=reader, w=writer) -> None:
                    tcp = await asyncio.open_connection("127.0.0.1", expose_target)
                    await splice((r, w), tcp)

                spawn(bridge())

    try:
        async for command in commands_until_stop(commands):
            cmd = command["cmd"]
            if cmd == "connect":
                conn = await peer.connect(command["meeting"], expect=command["expect"], timeout=command["timeout"])
                await asyncio.sleep(0.2)
                spawn(accept_loop())
                emit("connected", path=conn.path, rtt=conn.rtt, transport=peer.beacon_status[0].transport)
            elif cmd == "send":
                for _ in range(command.get("repeat", 1)):
                    elapsed = await asyncio.wait_for(
                        send_stream(*await conn.open_stream(), command["size"]), command["timeout"]
                    )
                    emit(
                        "sent",
                        bytes=command["size"],
                        seconds=elapsed,
                        path=conn.path,
                        datagram_size=conn.datagram_size,
                        gc=[g["collections"] for g in gc.get_stats()],
                        gc_count=gc.get_count(),
                        objects=len(gc.get_objects()),
                    )
                emit("done")
            elif cmd == "quicstats":  # congestion state of the peer connection (diagnostics)
                from discretpeer.quic_stack import congestion_state, max_datagram_size

                quic = conn._protocol.quic
                emit("quicstats", dgram=max_datagram_size(quic), **congestion_state(quic))
            elif cmd == "expose":
                expose_target = command["target"]
                emit("exposed")
            elif cmd == "forward":

                async def client(reader, writer, conn=conn) -> None:
                    stream = await conn.open_stream()
                    await splice((reader, writer), stream)

                server = await asyncio.start_server(client, "127.0.0.1", command["port"])
                servers.append(server)
                emit("forwarding", port=server.sockets[0].getsockname()[1])
    finally:
        for server in servers:
            server.close()
        for task in list(tasks):
            task.cancel()
        await peer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--beacon-port", type=int, required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--relay-only", action="store_true", help="direct=False: only the relay path")
    parser.add_argument("--tcp-only", action="store_true", help="reach the beacon over TLS/TCP (its UDP unreachable)")
    parser.add_argument("--host", default="127.0.0.1", help="the address the peer binds")
    parser.add_argument("--beacon-host", default="127.0.0.1")
    add_variant_flags(parser)
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
