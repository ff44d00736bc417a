"""Introduction latency prober: a few registered connections on one Endpoint.

Each sample: connection A announces a fresh token and makes sure the beacon has it (Ping/Pong on
the same stream, so the Pong comes after the Announce was handled); then B announces the same
token at t0. Latency = t0 until both A and B hold their Introduction (B's own arrives one RTT
after t0, A's is sent in the same beacon callback). Both withdraw the token afterwards. The
Ping/Pong round trip through the beacon is recorded too, as the floor to compare with.

Command: {"cmd": "measure", "samples": N, "interval": seconds} -> {"event": "measured", ...}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

from benchmarks.common import commands_until_stop, emit, percentile, run_loop, stdin_commands, worker_args
from benchmarks.workers.load import Pool
from discretpeer.endpoint import Endpoint
from discretpeer.proto import wire


class Prober:
    def __init__(self) -> None:
        self.waiting: dict[tuple[int, bytes], asyncio.Future[float]] = {}
        self.pongs: dict[int, asyncio.Future[float]] = {}

    def on_message(self, client, message) -> None:
        now = time.perf_counter()
        if isinstance(message, wire.Introduction):
            future = self.waiting.pop((id(client), message.token), None)
            if future is not None and not future.done():
                future.set_result(now)
        elif isinstance(message, wire.Pong):
            future = self.pongs.pop(message.nonce, None)
            if future is not None and not future.done():
                future.set_result(now)


async def measure(pool: Pool, prober: Prober, clients: list, samples: int, interval: float) -> dict:
    loop = asyncio.get_running_loop()
    both: list[float] = []
    announcer: list[float] = []
    holder: list[float] = []
    pings: list[float] = []
    failures = 0
    started = time.perf_counter()
    for index in range(samples):
        a, b = random.sample(clients, 2)
        token = os.urandom(wire.TOKEN_SIZE)
        nonce = index + 1
        pong = prober.pongs[nonce] = loop.create_future()
        sent_ping = time.perf_counter()
        a.send(wire.Announce(add=(token,)))
        a.send(wire.Ping(nonce=nonce))
        got_a = prober.waiting[(id(a), token)] = loop.create_future()
        got_b = prober.waiting[(id(b), token)] = loop.create_future()
        try:
            pings.append(await asyncio.wait_for(pong, 5.0) - sent_ping)
            t0 = time.perf_counter()
            b.send(wire.Announce(add=(token,)))
            ta, tb = await asyncio.wait_for(asyncio.gather(got_a, got_b), 5.0)
            holder.append(ta - t0)
            announcer.append(tb - t0)
            both.append(max(ta, tb) - t0)
        except TimeoutError:
            failures += 1
        prober.waiting.pop((id(a), token), None)
        prober.waiting.pop((id(b), token), None)
        a.send(wire.Announce(withdraw=(token,)))
        b.send(wire.Announce(withdraw=(token,)))
        next_at = started + (index + 1) * interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def stats(values: list[float]) -> dict:
        return {
            "p50_ms": 1000 * percentile(values, 50),
            "p99_ms": 1000 * percentile(values, 99),
            "max_ms": 1000 * max(values) if values else float("nan"),
        }

    return {
        "samples": len(both),
        "failures": failures,
        "both": stats(both),
        "announcer": stats(announcer),
        "holder": stats(holder),
        "ping": stats(pings),
        "both_all_ms": [round(1000 * v, 3) for v in both],
        "seconds": time.perf_counter() - started,
    }


async def main(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    host, port = args.target.rsplit(":", 1)
    endpoint = await Endpoint.open("127.0.0.1", 0)
    pool = Pool(endpoint, (host, int(port)), args.fingerprint, "beacon", False)
    prober = Prober()
    clients = []
    for _ in range(args.connections):
        client = await pool.register(on_message=prober.on_message)
        if client is None:
            emit("error", message=f"could not register a probe connection: {dict(pool.errors)}")
            return
        clients.append(client)
    emit("ready", pid=os.getpid(), port=endpoint.port)
    try:
        async for command in commands_until_stop(commands):
            if command["cmd"] == "measure":
                emit("measured", **(await measure(pool, prober, clients, command["samples"], command["interval"])))
    finally:
        pool.close_all()
        await asyncio.sleep(0.2)
        endpoint.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--connections", type=int, default=8)
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
