"""Load client over TLS/TCP: many beacon registrations (Hello + Announce of one token and one
candidate, done at the Welcome) on TCP connections, held idle (the TCP twin of ``load``).

Commands (JSON lines on stdin): {"cmd": "ramp", "count": N, "concurrency": C}, {"cmd": "stats"},
{"cmd": "stop"}.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from benchmarks.common import commands_until_stop, emit, run_loop, stdin_commands, worker_args
from discretpeer.beacon_tcp import TcpChannel, open_channel
from discretpeer.proto import wire


async def register(host: str, port: int, fingerprint: str) -> TcpChannel:
    channel = await open_channel(host, port, fingerprint, timeout=30)
    try:
        channel.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE)))
        channel.send(
            wire.Announce(add=(os.urandom(wire.TOKEN_SIZE),), candidates=(wire.Address("192.168.1.20", 40000),))
        )
        while True:
            items = await asyncio.wait_for(channel.receive(), 30)
            if any(isinstance(i, wire.Welcome) for i in items):
                return channel
    except BaseException:
        channel.close()
        raise


async def main(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    host, port = args.target.rsplit(":", 1)
    live: list[TcpChannel] = []
    failed = 0
    emit("ready", pid=os.getpid())
    try:
        async for command in commands_until_stop(commands):
            if command["cmd"] == "ramp":
                gate = asyncio.Semaphore(command.get("concurrency", 16))
                before = failed

                async def one(gate: asyncio.Semaphore = gate) -> None:
                    nonlocal failed
                    async with gate:
                        try:
                            live.append(await register(host, int(port), args.fingerprint))
                        except Exception:  # noqa: BLE001 - counted
                            failed += 1

                await asyncio.gather(*(one() for _ in range(command["count"])))
                emit("ramped", opened=command["count"] - (failed - before), failed=failed - before)
            elif command["cmd"] == "stats":
                emit("stats", live=sum(1 for c in live if not c.closed), failed=failed)
    finally:
        for channel in live:
            channel.close()
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="host:port of the beacon's TLS/TCP listener")
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--kind", choices=["beacon"], default="beacon")
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
