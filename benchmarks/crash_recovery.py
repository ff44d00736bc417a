"""``python -m benchmarks.crash_recovery [--runs N]``: how fast peers recover from a beacon crash.

A beacon process (``python -m beacon --dir D``) is killed with SIGKILL at a random moment and
restarted in the same directory on the same port. Three figures, N runs each:

- waiting peers meet again: A listens on a meeting, B waits on another one; after the restart B
  connects to A's meeting. Time = restart ("ready") → B's connection to A verified.
- relayed connection: two relay-only peers connected; after the restart the application connects
  again as soon as the old connection ends. Time = restart → new relayed connection verified.
- dead beacon (not restarted): kill → the peer's beacon client declares it lost.

The kill comes after a random pause of 0–8 s (a keepalive period), so the clients' keepalive
phase is random as in real life. Traffic stays on 127.0.0.1. Prints p50/max, writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path

from discretpeer import Peer
from tests.peer.beacon_process import BeaconProcess, loopback_peer


def connected(p: Peer) -> bool:
    return p.beacon_status[0].state == "connected"


async def until(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]  # a local helper
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)
    return loop.time()


async def waiting_run(beacon: BeaconProcess, index: int, rng: random.Random) -> tuple[float, float]:
    async with loopback_peer(beacon) as pa, loopback_peer(beacon) as pb:
        meeting = f"crash meeting {index}"
        await pa.listen(meeting, expect=pb.peer_id)
        await pb.listen(f"elsewhere {index}", expect=None)
        await until(lambda: connected(pa) and connected(pb), 10)
        await asyncio.sleep(rng.uniform(0.0, 8.0))
        killed = await beacon.kill()
        restarted = await beacon.start()
        await pb.connect(meeting, expect=pa.peer_id, timeout=30)
        met = asyncio.get_running_loop().time()
        return met - restarted, met - killed


async def relay_run(beacon: BeaconProcess, index: int, rng: random.Random) -> tuple[float, float]:
    async with loopback_peer(beacon, direct=False) as pa, loopback_peer(beacon, direct=False) as pb:
        meeting = f"relayed {index}"
        ca, cb = await asyncio.gather(pa.connect(meeting, expect=pb.peer_id), pb.connect(meeting, expect=pa.peer_id))
        assert ca.path == "relay"
        await asyncio.sleep(rng.uniform(0.0, 8.0))
        killed = await beacon.kill()
        restarted = await beacon.start()
        await asyncio.wait_for(asyncio.gather(ca.wait_closed(), cb.wait_closed()), 30)
        ca, cb = await asyncio.gather(
            pa.connect(meeting, expect=pb.peer_id, timeout=30), pb.connect(meeting, expect=pa.peer_id, timeout=30)
        )
        assert ca.path == cb.path == "relay"
        back = asyncio.get_running_loop().time()
        return back - restarted, back - killed


async def dead_run(beacon: BeaconProcess, index: int, rng: random.Random) -> float:
    async with loopback_peer(beacon) as p:
        await p.listen(f"waiting {index}", expect=None)
        await until(lambda: connected(p), 10)
        await asyncio.sleep(rng.uniform(0.0, 8.0))
        killed = await beacon.kill()
        lost = await until(lambda: not connected(p), 70)
        await beacon.start()  # for the next run
        return lost - killed


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<44} runs {len(values):>2}  p50 {statistics.median(values):5.2f} s  "
        f"max {max(values):5.2f} s  min {min(values):5.2f} s"
    )


async def amain(runs: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        beacon = BeaconProcess(Path(tmp) / "beacon", stderr=asyncio.subprocess.DEVNULL)
        await beacon.start()
        try:
            waiting = [await waiting_run(beacon, i, rng) for i in range(runs)]
            relayed = [await relay_run(beacon, i, rng) for i in range(runs)]
            dead = [await dead_run(beacon, i, rng) for i in range(max(3, runs // 2))]
        finally:
            await beacon.stop()
    print(summary("waiting peers meet again (from restart)", [w[0] for w in waiting]))
    print(summary("waiting peers meet again (from kill)", [w[1] for w in waiting]))
    print(summary("relayed connection back (from restart)", [r[0] for r in relayed]))
    print(summary("relayed connection back (from kill)", [r[1] for r in relayed]))
    print(summary("dead beacon declared lost (from kill)", dead))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    asyncio.run(amain(args.runs, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
