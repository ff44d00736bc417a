"""Scale-out benchmarks (issue 17): the Redis store's cost, cross-worker latency, memory at scale.

    .venv/bin/python -m benchmarks.scaleout                 # ~4 min on 2 cores
    .venv/bin/python -m benchmarks.scaleout --peers 40000   # the issue's size (client RAM ~3 GB)

Every beacon is a real ``python -m beacon`` process (its Beacon.conf.toml raises the per-IP limits:
all load comes from 127.0.0.1) and Redis a real ``redis-server`` on a free loopback port.

* **rate**: a beacon with the in-memory store and one with the Redis store run *at the same time*,
  both pinned to core 0, their load clients to core 1; registrations (handshake + Hello + Announce
  of one fresh token, as ``benchmarks/workers/load.py``) per CPU-second of each beacon process. The
  Redis row also reports the rate per CPU-second of beacon + redis-server together.
* **latency**: ``workers = 2`` + Redis, a background load holding peers and churning; a prober
  holds two connections on each worker (told apart by the first byte of the connection ID the
  worker chose) and alternates same-worker and cross-worker meetings: A announces a fresh token
  (Ping/Pong: the beacon has it), then B announces it; latency = until both hold their Introduction.
* **rebinding**: ``workers = 2``; a client behind a UDP "NAT" that moves it to a new source port
  before each Ping; a rebinding is kept when the Pong comes back (its worker still got it), with the
  BPF steering program and with the kernel's 4-tuple hash only.
* **memory**: ``workers = 4`` + Redis with ``--peers`` registered peers (4 load clients), RSS of the
  supervisor and each worker, Redis ``used_memory``; then one in-memory process with the same peers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Worker, cpu_seconds, load_module, percentile, rss_bytes, taskset_prefix
from tests.scaleout.processes import write_beacon_config
from tests.scaleout.redis_server import RedisServer
from tests.support.processes import beacon_command, stop_process

SETTINGS = {
    "max_connections": 200000,
    "max_connections_per_ip": 200000,
    "handshakes_per_second_per_ip": 100000.0,
    "handshake_burst_per_ip": 100000,
    "retry": "never",
    "idle_timeout_seconds": 900.0,
    "log_level": "warning",
}


class Beacon:
    def __init__(self, name: str, directory: Path, settings: dict[str, Any], core: int | None) -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        write_beacon_config(directory, settings)
        self.core = core
        self.process: subprocess.Popen[bytes] | None = None
        self.facts: dict[str, Any] = {}

    def start(self) -> Beacon:
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.directory / "stderr.log", "ab")  # noqa: SIM115 - kept open for the child
        self.process = subprocess.Popen(
            [*taskset_prefix(self.core), *beacon_command(self.directory, "--ready-file", str(ready))],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {(self.directory / 'stderr.log').read_text()[-500:]}")
            time.sleep(0.05)
        self.facts = json.loads(ready.read_text())
        return self

    @property
    def pids(self) -> list[int]:
        """The processes doing the work: the workers, or the beacon itself."""
        return [w["pid"] for w in self.facts.get("workers", [])] or [self.facts["pid"]]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.facts['port']}"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 30)


async def load_client(name: str, beacon: Beacon, log_dir: Path, core: int | None) -> Worker:
    worker = Worker(
        name,
        ["--target", beacon.target, "--fingerprint", beacon.facts["fingerprint"], "--uvloop"],
        core=core,
        log_dir=log_dir,
        deadline=1800,
    )
    await worker.start("load")
    await worker.expect("ready", 30)
    return worker


def redis_cpu(redis: RedisServer) -> float:
    assert redis.process is not None
    return cpu_seconds(redis.process.pid)


def redis_memory(redis: RedisServer) -> int:
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def bench_rate(tmp: Path, redis: RedisServer, count: int, rounds: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {"memory": [], "redis": [], "redis_with_server": []}
    for round_index in range(rounds):
        mem = Beacon("rate-memory", tmp / f"rate-memory-{round_index}", SETTINGS, core=0).start()
        red = Beacon("rate-redis", tmp / f"rate-redis-{round_index}", {**SETTINGS, "store": redis.url}, core=0).start()
        clients = [await load_client(f"rate-load-{b.name}-{round_index}", b, tmp, core=1) for b in (mem, red)]
        try:
            before = {b.name: cpu_seconds(b.pids[0]) for b in (mem, red)}
            redis_before = redis_cpu(redis)
            for client in clients:
                client.send(cmd="ramp", count=count, concurrency=32)
            ramped = [await client.expect("ramped", 600) for client in clients]
            await asyncio.sleep(3.5)  # the beacons' deferred per-connection work (3 s after each handshake)
            used = {b.name: cpu_seconds(b.pids[0]) - before[b.name] for b in (mem, red)}
            redis_used = redis_cpu(redis) - redis_before
            done_mem, done_red = ramped[0]["opened"], ramped[1]["opened"]
            results["memory"].append(done_mem / used["rate-memory"])
            results["redis"].append(done_red / used["rate-redis"])
            results["redis_with_server"].append(done_red / (used["rate-redis"] + redis_used))
            print(
                f"rate round {round_index + 1}: memory {results['memory'][-1]:.0f}/CPU-s, "
                f"redis {results['redis'][-1]:.0f}/CPU-s (with redis-server {results['redis_with_server'][-1]:.0f})",
                flush=True,
            )
        finally:
            for client in clients:
                await client.stop()
            mem.stop()
            red.stop()
    return results


async def bench_latency(
    tmp: Path, redis: RedisServer, samples: int, background: int, churn: float, shared: bool = True
) -> dict[str, Any]:
    from benchmarks.workers.intro import Prober
    from benchmarks.workers.load import Pool
    from discretpeer.endpoint import Endpoint
    from discretpeer.proto import wire

    settings = {**SETTINGS, "store": redis.url, "workers": 2} if shared else SETTINGS
    name = "latency" if shared else "latency-single-memory"
    beacon = Beacon(name, tmp / name, settings, core=None).start()
    load = await load_client("latency-load", beacon, tmp, core=None)
    endpoints: list[Any] = []
    try:
        load.send(cmd="ramp", count=background, concurrency=32)
        await load.expect("ramped", 600)
        load.send(cmd="churn", rate=churn, duration=samples * 0.05 + 30)
        host, port = beacon.target.rsplit(":", 1)
        prober = Prober()
        by_worker: dict[int, list[Any]] = {0: [], 1: []} if shared else {0: []}
        for _ in range(200):
            # one socket per connection: the kernel places a handshake by its 4-tuple
            endpoint = await Endpoint.open("127.0.0.1", 0)
            endpoints.append(endpoint)
            pool = Pool(endpoint, (host, int(port)), beacon.facts["fingerprint"], "beacon", False)
            client = await pool.register(prober.on_message)
            if client is None:
                continue
            index = client._quic._peer_cid.cid[0] if shared else 0
            if len(by_worker.get(index, [])) < 2:
                by_worker[index].append(client)
            if all(len(v) == 2 for v in by_worker.values()):
                break
        assert all(len(v) == 2 for v in by_worker.values()), "could not place prober connections on both workers"
        loop = asyncio.get_running_loop()
        times: dict[str, list[float]] = {"same": [], "cross": []}
        failures = {"same": 0, "cross": 0}
        for index in range(samples):
            kind = "same" if index % 2 == 0 or not shared else "cross"
            w = random.randint(0, 1) if shared else 0
            a = by_worker[w][0]
            b = by_worker[w][1] if kind == "same" else by_worker[1 - w][0]
            token = os.urandom(wire.TOKEN_SIZE)
            nonce = index + 1
            pong = prober.pongs[nonce] = loop.create_future()
            got_a = prober.waiting[(id(a), token)] = loop.create_future()
            got_b = prober.waiting[(id(b), token)] = loop.create_future()
            a.send(wire.Announce(add=(token,)))
            a.send(wire.Ping(nonce=nonce))
            try:
                await asyncio.wait_for(pong, 5)
                await asyncio.sleep(0.005)  # the Lua write is queued after the Pong: let it land
                t0 = time.perf_counter()
                b.send(wire.Announce(add=(token,)))
                done = await asyncio.wait_for(asyncio.gather(got_a, got_b), 5)
                times[kind].append(max(done) - t0)
            except TimeoutError:
                failures[kind] += 1
                prober.waiting.pop((id(a), token), None)
                prober.waiting.pop((id(b), token), None)
            a.send(wire.Announce(withdraw=(token,)))
            b.send(wire.Announce(withdraw=(token,)))
            await asyncio.sleep(0.02)
        load.send(cmd="stats")
        stats = await load.expect("stats", 30)
        return {
            kind: {
                "p50_ms": 1000 * percentile(values, 50),
                "p99_ms": 1000 * percentile(values, 99),
                "samples": len(values),
                "failures": failures[kind],
            }
            for kind, values in times.items()
            if values or failures[kind]
        } | {"background": stats}
    finally:
        for endpoint in endpoints:
            endpoint.close()
        await load.stop()
        beacon.stop()


async def bench_rebinding(tmp: Path, redis: RedisServer, rebinds: int) -> dict[str, Any]:
    """A client behind a "NAT" that moves it to a new source port before each Ping: with the BPF
    steering program, and with the kernel's 4-tuple hash only (DISCRETPEER_BEACON_STEERING=0)."""
    from discretpeer.proto import wire
    from tests.scaleout.processes import RebindingNat

    client_module = load_module("beacon_test_client", ROOT / "tests" / "beacon" / "client.py")
    out: dict[str, Any] = {}
    for name, steering in (("steering", "1"), ("hash_only", "0")):
        os.environ["DISCRETPEER_BEACON_STEERING"] = steering
        try:
            beacon = Beacon(
                f"rebind-{name}", tmp / f"rebind-{name}", {**SETTINGS, "store": redis.url, "workers": 2}, core=None
            ).start()
        finally:
            os.environ.pop("DISCRETPEER_BEACON_STEERING", None)
        kept = lost = 0
        times: list[float] = []
        try:
            address = ("127.0.0.1", beacon.facts["port"])
            while kept + lost < rebinds:
                nat = await RebindingNat.open(address)
                client = await client_module.BeaconClient.connect(nat.address, beacon.facts["fingerprint"])
                try:
                    while kept + lost < rebinds:
                        await nat.rebind()
                        started = time.perf_counter()
                        client.send(wire.Ping(nonce=kept + lost))
                        try:
                            await client.expect(wire.Pong, timeout=2.0)
                        except (TimeoutError, AssertionError, ConnectionError):
                            lost += 1
                            break  # this connection is lost: a new one
                        kept += 1
                        times.append(time.perf_counter() - started)
                finally:
                    await client.close()
                    nat.close()
        finally:
            beacon.stop()
        out[name] = {
            "rebinds": kept + lost,
            "kept": kept,
            "lost": lost,
            "pong_after_rebind_p50_ms": 1000 * percentile(times, 50),
        }
        print(f"rebinding {name}: {json.dumps(out[name])}", flush=True)
    return out


async def bench_memory(tmp: Path, redis: RedisServer, peers: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, settings in (
        ("workers4_redis", {**SETTINGS, "store": redis.url, "workers": 4}),
        ("single_memory", SETTINGS),
    ):
        redis_before = redis_memory(redis)
        beacon = Beacon(name, tmp / f"memory-{name}", settings, core=None).start()
        time.sleep(1.0)
        start_rss = sum(rss_bytes(pid) for pid in beacon.pids)
        clients = [await load_client(f"memory-load-{name}-{i}", beacon, tmp, core=None) for i in range(4)]
        try:
            started = time.perf_counter()
            for client in clients:
                client.send(cmd="ramp", count=peers // 4, concurrency=24)
            ramped = [await client.expect("ramped", 1800) for client in clients]
            seconds = time.perf_counter() - started
            await asyncio.sleep(5)  # per-packet ciphers after 3 s, gc.freeze
            registered = sum(r["live"] for r in ramped)
            rss = {pid: rss_bytes(pid) for pid in beacon.pids}
            supervisor = rss_bytes(beacon.facts["pid"]) if beacon.facts.get("workers") else 0
            total = sum(rss.values()) + supervisor
            out[name] = {
                "peers": registered,
                "failed": sum(r["failed"] for r in ramped),
                "ramp_seconds": seconds,
                "rss_total_mb": total / 1e6,
                "rss_per_process_mb": [v / 1e6 for v in rss.values()],
                "supervisor_mb": supervisor / 1e6,
                "per_peer_kb": (sum(rss.values()) - start_rss) / max(1, registered) / 1e3,
                "redis_used_memory_mb": (redis_memory(redis) - redis_before) / 1e6 if "store" in settings else 0.0,
            }
            print(f"memory {name}: {json.dumps(out[name])}", flush=True)
        finally:
            for client in clients:
                await client.stop(grace=20)
            beacon.stop()
    return out


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    redis = RedisServer(tmp / "redis").start()
    results: dict[str, Any] = {"peers": args.peers}
    try:
        if "rate" in args.only:
            results["rate"] = await bench_rate(tmp, redis, args.rate_count, args.rate_rounds)
        if "latency" in args.only:
            results["latency"] = await bench_latency(tmp, redis, args.samples, args.background, args.churn)
            print(f"latency: {json.dumps(results['latency'])}", flush=True)
            results["latency_single_memory"] = await bench_latency(
                tmp, redis, args.samples // 2, args.background, args.churn, shared=False
            )
            print(f"latency, one in-memory process: {json.dumps(results['latency_single_memory'])}", flush=True)
        if "rebinding" in args.only:
            results["rebinding"] = await bench_rebinding(tmp, redis, args.rebinds)
        if "memory" in args.only:
            results["memory"] = await bench_memory(tmp, redis, args.peers)
    finally:
        redis.stop()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"scaleout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path} (logs: {tmp})")
    if "rate" in results:
        r = results["rate"]
        med = {k: percentile(v, 50) for k, v in r.items()}
        print(
            f"rate: memory {med['memory']:.0f}/CPU-s, redis {med['redis']:.0f}/CPU-s "
            f"({med['redis'] / med['memory']:.2f}x; with redis-server's CPU {med['redis_with_server']:.0f}, "
            f"{med['redis_with_server'] / med['memory']:.2f}x)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8000, help="peers registered for the memory figure")
    parser.add_argument("--rate-count", type=int, default=1500)
    parser.add_argument("--rate-rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=400, help="latency samples (half same-worker, half cross)")
    parser.add_argument("--background", type=int, default=2000, help="peers held during the latency run")
    parser.add_argument("--churn", type=float, default=50.0, help="new registrations per second during it")
    parser.add_argument("--rebinds", type=int, default=40, help="NAT rebindings per variant")
    parser.add_argument("--only", nargs="*", default=["rate", "latency", "rebinding", "memory"])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
