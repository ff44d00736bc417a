"""A hostile client process for the `attacks` benchmark (issue 12), using the test suite's
hostile clients (tests/beacon/hostile.py: real aioquic connections that inject raw frames).

Commands (each answered when done):
  {"cmd": "junk", "rate": R, "duration": D}            junk Initials from --bind -> "done"
  {"cmd": "hold", "connections": K, "rounds": N}       K connections run the out-of-order attack and
                                                       stay open -> "held" (how many are still open)
  {"cmd": "release"}                                   close them -> "released"
  {"cmd": "ooo_storm", "duration": D, "concurrency": C}  out-of-order attack on stream 0 and extra
                                                       streams, reconnecting when closed -> "done"
  {"cmd": "stop_sending_storm", "duration": D, "rate": R}  STOP_SENDING on stream 0 then Pings at R/s,
                                                       reconnecting when closed -> "done"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from benchmarks.common import ROOT, commands_until_stop, emit, load_module, run_loop, stdin_commands, worker_args
from discretpeer.proto import wire

client_module = load_module("beacon_test_client", ROOT / "tests" / "beacon" / "client.py")
hostile = load_module("beacon_test_hostile", ROOT / "tests" / "beacon" / "hostile.py")


class Attacker:
    def __init__(self, target: tuple[str, int], fingerprint: str, bind: str) -> None:
        self.target = target
        self.fingerprint = fingerprint
        self.bind = bind
        self.held: list[Any] = []
        self.errors = 0

    async def connect(self) -> Any:
        from discretpeer.endpoint import Endpoint

        endpoint = await Endpoint.open(self.bind, 0, connection_class=hostile.InjectingConnection)
        try:
            client = await client_module.BeaconClient.connect(
                self.target, self.fingerprint, endpoint=endpoint, timeout=3.0
            )
        except BaseException:
            endpoint.close()
            raise
        client.owns_endpoint = True
        return hostile.Hostile(client)

    async def junk(self, rate: float, duration: float) -> dict:
        raw = hostile.RawSocket() if self.bind == "127.0.0.1" else None
        if raw is None:
            raise ValueError("junk floods come from 127.0.0.1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = 0
        try:
            while loop.time() - started < duration:
                due = int((loop.time() - started) * rate) + 1
                while count < due:
                    raw.send(hostile.junk_initial(), self.target)
                    count += 1
                raw.drain()
                await asyncio.sleep(0.005)
            await raw.collect(0.3)
            return {"sent": raw.sent, "received": raw.received, "datagrams": count}
        finally:
            raw.close()

    async def hold(self, connections: int, rounds: int) -> dict:
        for _ in range(connections):
            try:
                self.held.append(await self.connect())
            except (TimeoutError, ConnectionError, OSError):
                self.errors += 1
        reached = await asyncio.gather(*(h.out_of_order(streams=(0,), rounds=rounds, pause=0.05) for h in self.held))
        await asyncio.sleep(0.5)
        return {
            "open": sum(not h.closed for h in self.held),
            "highest_offset": max(reached, default=0),
            "failed": self.errors,
        }

    async def release(self) -> None:
        held, self.held = self.held, []
        for h in held:
            await h.close()

    async def storm(self, duration: float, concurrency: int, one: Any) -> dict:
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        stats = {"connections": 0, "closed_by_beacon": 0, "failed": 0}

        async def lane() -> None:
            while loop.time() < end:
                try:
                    attacker = await self.connect()
                except (TimeoutError, ConnectionError, OSError):
                    stats["failed"] += 1
                    await asyncio.sleep(0.1)
                    continue
                stats["connections"] += 1
                try:
                    await one(attacker, end)
                    if attacker.closed:
                        stats["closed_by_beacon"] += 1
                finally:
                    await attacker.close()

        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return stats

    @staticmethod
    async def out_of_order_once(attacker: Any, end: float) -> None:
        """The credit-doubling attack on stream 0, then many gaps, then extra streams."""
        await attacker.out_of_order(streams=(0,), rounds=12, pause=0.03)
        if not attacker.closed:
            attacker.send_frames(*(hostile.stream_frame(0, 8000 + 2 * i, b"x") for i in range(64)))
            attacker.send_frames(hostile.stream_frame(4, 60000, b"x"), hostile.stream_frame(2, 60000, b"x"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not attacker.closed and loop.time() < deadline:
            await asyncio.sleep(0.01)

    @staticmethod
    def stop_sending_once(rate: float) -> Any:
        async def one(attacker: Any, end: float) -> None:
            attacker.send_frames(hostile.stop_sending(0))
            loop = asyncio.get_running_loop()
            nonce = 0
            deadline = min(end, loop.time() + 2.0)
            while not attacker.closed and loop.time() < deadline:
                nonce += 1
                attacker.client.send(wire.Ping(nonce=nonce))
                await asyncio.sleep(1 / rate)

        return one


async def main(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    host, port = args.target.rsplit(":", 1)
    attacker = Attacker((host, int(port)), args.fingerprint, args.bind)
    emit("ready", pid=os.getpid())
    try:
        async for command in commands_until_stop(commands):
            started = time.perf_counter()
            cmd = command["cmd"]
            if cmd == "junk":
                emit("done", **(await attacker.junk(command["rate"], command["duration"])))
            elif cmd == "hold":
                emit("held", **(await attacker.hold(command["connections"], command["rounds"])))
            elif cmd == "release":
                await attacker.release()
                emit("released")
            elif cmd == "ooo_storm":
                emit(
                    "done",
                    **(await attacker.storm(command["duration"], command["concurrency"], Attacker.out_of_order_once)),
                )
            elif cmd == "stop_sending_storm":
                emit(
                    "done",
                    **(
                        await attacker.storm(
                            command["duration"],
                            command.get("concurrency", 4),
                            Attacker.stop_sending_once(command["rate"]),
                        )
                    ),
                )
            else:
                emit("error", message=f"unknown command {cmd}")
            sys.stderr.write(f"{cmd} took {time.perf_counter() - started:.1f}s\n")
    finally:
        await attacker.release()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--bind", default="127.0.0.2", help="source address (junk floods: 127.0.0.1)")
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
