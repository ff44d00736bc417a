"""``python -m benchmarks [--quick] [--only NAME ...]``: every figure with a baseline measured in
the same run, the ratio, the target; a table on stdout and ``benchmarks/results/<ts>.json``.

Benchmarks (``--only`` names):
  beacon      RSS per registered idle peer (ramp to 10,000 from 4 client processes, one Endpoint
              each) vs a bare aioquic server holding the same connections; then introduction
              latency p50/p99 with those peers registered and 200/s churn
  rate        registrations per second, beacon pinned to one core, clients on the other, vs
              bare aioquic handshakes
  throughput  one stream between two peer processes vs plain aioquic (default settings)
  relay       the same stream through the beacon's relay vs the direct path
  tcp         TCP through `discretpeer forward`/`expose` vs `ssh -L` and a raw TCP copy
  stack       qh3 vs aioquic (bulk, handshakes per CPU-second, memory; one stream at 1472 bytes both
              ways next to plain aioquic and the library), with --qh3-python only
  attacks     the beacon under issue 12's QUIC-level attacks (default limits): bytes out per byte in
              from unvalidated sources, RSS per hostile connection, meeting latency quiet vs attacked
  natlab      introduction -> verified direct connection through real Linux NATs (tests/natlab, 20 ms
              per internet link), in RTTs of the same connections (root and namespaces needed)
  tcpfallback issue 14: relay throughput with one TLS/TCP leg and with two vs the UDP relay; beacon
              RSS per idle TCP-registered peer vs per UDP one; NAT lab udp_blocked <-> port_restricted
              introduction -> verified p50/p99 (not in the default set: --only tcpfallback)
  mtu         one stream at 1472 and 1350-byte datagrams (Peer(max_datagram_size=N)) vs plain aioquic
              at the same size, with ablations; py-libp2p QUIC/TCP with --libp2p / --libp2p-python
  natbulk     one stream through the NAT lab (1500-byte veth, 20 ms per link), direct and relayed, vs
              loopback at the same size; and over 100 Mbit/s home lines (tbf) vs the line's rate
  birthday    symmetric <-> port_restricted through real NATs: share of meetings ending direct by hard-NAT
              (birthday) probing, introduction -> direct, packets per attempt (root and namespaces needed)
  pyc         the installed package with its .pyc files vs compiled from source at import
  peermem     RSS per idle handshaken peer connection on qh3 (the default) vs aioquic

The workers run the package as pip installs it: a fresh venv per run (``pip install .[fast]``,
``.pyc`` written), only a copy of benchmarks/ on their PYTHONPATH (--from-checkout: the checkout).

Every process is bounded in time (its own deadline) and every load loop in count.
DPB_QUICK_PEERS=N changes the peer count of --quick (default 2000); DPB_QH3_PYTHON = --qh3-python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    ROOT,
    Worker,
    WorkerError,
    cpu_count,
    cpu_seconds,
    free_tcp_port,
    median,
    rss_bytes,
    udp_drops,
)
from benchmarks.installed import Installed, install, scratch_libp2p
from tests.support.processes import stop_process

MB = 1e6
LINE_MBIT = 100.0  # natbulk's home lines, where it limits them (a common fibre or cable plan)
# natbulk's windows sized for the lab's paths (Tuning.for_path, the CLI's --tuning path=...): qh3's
# loopback rate at 1472 B (~250 MB/s = 2 Gbit/s) over the longer of the two round trips under load,
# the relayed one (~200 ms: the beacon is two links from each home, twice the direct path's ~100).
# Sized for the direct one only, a relayed stream was held to half a window per ~190 ms, ~130 MB/s.
LAB_PATH = "2gbit@200ms"
SHIPPED = "library (qh3, asyncio's loop: the defaults)"  # the mtu rows' shipped variant, held to the targets


@dataclass
class Row:
    benchmark: str
    figure: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)


def bulk_figures(size: int, rates: list[float], cpu: dict[str, float]) -> dict[str, Any]:
    """MB/s of each transfer of ``size`` bytes, their median, and MB moved per CPU-second of each
    side (``cpu``: CPU seconds by side; steadier than MB/s on a shared machine)."""
    total = size * len(rates) / MB
    return {
        "rates": rates,
        "median": median(rates),
        "mb_per_cpu": {side: total / seconds for side, seconds in cpu.items() if seconds > 0},
    }


class Interleaved:
    """A loopback pair's transfers, one per call of :meth:`transfer` from a thread that is not
    the loop's (natlab_bulk's ``before_each``); :meth:`result` as :meth:`Bench.bulk` returns it."""

    def __init__(self, sender: Worker, receiver: Worker, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.sender, self.receiver, self.size, self.loop = sender, receiver, size, loop
        self.rates: list[float] = []
        self.cpu = {"sender": 0.0, "receiver": 0.0}

    async def _one(self) -> None:
        workers = {"sender": self.sender, "receiver": self.receiver}
        cpu0 = {name: cpu_seconds(w.pid) for name, w in workers.items()}
        self.sender.send(cmd="send", size=self.size, repeat=1, timeout=240)
        sent = await self.sender.expect("sent", 260)
        self.rates.append(self.size / sent["seconds"] / MB)
        for name, w in workers.items():
            self.cpu[name] += cpu_seconds(w.pid) - cpu0[name]

    def transfer(self) -> None:
        asyncio.run_coroutine_threadsafe(self._one(), self.loop).result(timeout=300)

    def result(self) -> dict[str, Any]:
        return bulk_figures(self.size, self.rates, self.cpu)


@dataclass
class Settings:
    quick: bool
    peers: int
    client_processes: int
    latency_samples: int
    churn_rate: float
    rate_count: int
    rate_rounds: int
    bulk_bytes: int
    bulk_repeat: int
    relay_bytes: int
    tcp_bytes: int
    variants: bool


def settings_for(quick: bool) -> Settings:
    if quick:
        return Settings(
            quick,
            int(os.environ.get("DPB_QUICK_PEERS", 2000)),
            4,
            150,
            200.0,
            500,
            2,
            16_000_000,
            2,
            8_000_000,
            16_000_000,
            False,
        )
    return Settings(False, 10000, 4, 600, 200.0, 2000, 3, 48_000_000, 3, 24_000_000, 32_000_000, True)


class Bench:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.s = settings
        self.log_dir = log_dir
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {}
        self.workers: list[Worker] = []
        self.counter = 0
        self.qh3_python: str | None = None
        self.libp2p_python: str | None = None
        self.installed: Installed | None = None
        self.worker_env: dict[str, str] = {}  # extra environment of the workers started now
        self.temp_dirs: list[Path] = []

    # --- helpers ----------------------------------------------------------------------------

    async def worker(
        self,
        name: str,
        module: str,
        args: list[str],
        *,
        core: int | None = None,
        deadline: float = 600,
        ready_timeout: float = 60,
        python: str | None = None,
    ) -> tuple[Worker, dict]:
        self.counter += 1
        w = Worker(f"{self.counter:02d}-{name}", args, core=core, log_dir=self.log_dir, deadline=deadline)
        if self.worker_env:
            w.env = {**os.environ, **self.worker_env}
        if python:
            w.python = python
        elif self.installed is not None:  # the package as pip installed it (.pyc), not the checkout
            w.python, w.root = self.installed.python, self.installed.root
        self.workers.append(w)
        await w.start(module)
        return w, await w.expect("ready", ready_timeout)

    async def stop_all(self) -> None:
        workers, self.workers = self.workers, []
        await asyncio.gather(*(w.stop() for w in reversed(workers)), return_exceptions=True)
        for path in self.temp_dirs:  # the CLI's identities and control sockets
            shutil.rmtree(path, ignore_errors=True)
        self.temp_dirs.clear()

    def add(self, row: Row) -> None:
        if row.baseline and row.value is not None and row.ratio is None:
            row.ratio = row.value / row.baseline
        self.rows.append(row)
        print(f"  -> {format_row(row)}", flush=True)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # --- beacon: memory and introduction latency --------------------------------------------

    async def server_ramp(self, kind: str, server_args: list[str], count: int, load: str = "load") -> dict:
        """Start a server, ramp ``count`` connections from the client processes; return facts.
        The caller stops the workers (the beacon phase keeps them for the latency run)."""
        server, ready = await self.worker(f"server-{kind}", "server", ["--kind", kind, "--uvloop", *server_args])
        await asyncio.sleep(0.5)
        rss0 = rss_bytes(server.pid)
        target = f"127.0.0.1:{ready['port']}"
        clients = []
        for index in range(self.s.client_processes):
            client, _ = await self.worker(
                f"{load}{index}-{kind}",
                load,
                ["--target", target, f"--fingerprint={ready['fingerprint']}", "--kind", kind, "--uvloop"],
            )
            clients.append(client)
        share = count // len(clients)
        started = time.perf_counter()
        cpu0 = cpu_seconds(server.pid)
        for client in clients:
            client.send(cmd="ramp", count=share, concurrency=16)
        results = [await client.expect("ramped", 400) for client in clients]
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu0
        await asyncio.sleep(2.0)  # let the last ACKs and timers settle
        server.send(cmd="stats", gc=True)
        stats = await server.expect("stats", 60)
        rss1 = rss_bytes(server.pid)
        opened = sum(r["opened"] for r in results)
        failed = sum(r["failed"] for r in results)
        held = stats["connections"]
        self.log(
            f"{kind} {' '.join(server_args)}: {held} connections held ({failed} failed) in {elapsed:.1f}s, "
            f"RSS {rss0 / MB:.0f} -> {rss1 / MB:.0f} MB"
        )
        return {
            "server": server,
            "clients": clients,
            "ready": ready,
            "rss0": rss0,
            "rss1": rss1,
            "held": held,
            "opened": opened,
            "failed": failed,
            "seconds": elapsed,
            "server_cpu": cpu,
            "stats": stats,
            "per_peer": (rss1 - rss0) / max(1, held),
        }

    async def bench_beacon(self) -> None:
        n = self.s.peers
        self.log(f"beacon: ramp to {n} idle connections, bare aioquic server first")
        bare = await self.server_ramp("bare", [], n)
        await self.stop_all()
        untrimmed = None
        if self.s.variants:
            self.log("beacon with aioquic's per-connection state kept (TRIM_AFTER_HANDSHAKE = False)")
            untrimmed = await self.server_ramp("beacon", ["--no-trim"], n)
            await self.stop_all()
        self.log("beacon as shipped")
        beacon = await self.server_ramp("beacon", [], n)
        registered = beacon["stats"].get("registered", 0)
        self.add(
            Row(
                "beacon",
                f"RSS per registered idle peer ({registered} peers)",
                beacon["per_peer"] / 1024,
                "KB",
                "bare aioquic server, same connections",
                bare["per_peer"] / 1024,
                target="(informative)",
                note=f"bare held {bare['held']}",
            )
        )
        extrapolated = beacon["rss0"] + beacon["per_peer"] * 10000
        self.add(
            Row(
                "beacon",
                f"beacon process RSS with {registered} peers",
                beacon["rss1"] / MB,
                "MB",
                "bare aioquic server RSS, same connections",
                bare["rss1"] / MB,
                target="10,000 peers in <= 400 MB",
                met=(registered >= 10000 and beacon["rss1"] <= 400 * MB) if registered >= 10000 else None,
                note="" if registered >= 10000 else f"quick run: 10,000 would be ~{extrapolated / MB:.0f} MB",
            )
        )
        if untrimmed is not None:
            self.add(
                Row(
                    "beacon",
                    "RSS per peer: beacon.quic_tuning on vs off",
                    beacon["per_peer"] / 1024,
                    "KB",
                    "same beacon, TRIM_AFTER_HANDSHAKE = False",
                    untrimmed["per_peer"] / 1024,
                    target="(the memory work)",
                    note=f"off: {untrimmed['rss1'] / MB:.0f} MB total",
                )
            )
        self.extra["beacon_memory"] = {
            name: {k: v for k, v in r.items() if k not in ("server", "clients", "ready")}
            for name, r in (("bare", bare), ("beacon", beacon), ("beacon_untrimmed", untrimmed))
            if r
        }
        await self.intro_latency(beacon)
        await self.stop_all()

    async def intro_latency(self, beacon: dict) -> None:
        ready = beacon["ready"]
        prober, prober_ready = await self.worker(
            "intro",
            "intro",
            ["--target", f"127.0.0.1:{ready['port']}", f"--fingerprint={ready['fingerprint']}", "--uvloop"],
        )
        drops0 = (udp_drops(ready["port"]), udp_drops(prober_ready["port"]))
        samples = self.s.latency_samples
        interval = 0.02
        duration = samples * interval
        per_client = self.s.churn_rate / len(beacon["clients"])
        self.log(
            f"introduction latency: {samples} samples with {beacon['held']} peers and "
            f"{self.s.churn_rate:.0f}/s churn ({duration + 2:.0f}s)"
        )
        procs = [beacon["server"], *beacon["clients"], prober]
        cpu0 = [cpu_seconds(w.pid) for w in procs]
        begin = time.perf_counter()
        for client in beacon["clients"]:
            client.send(cmd="churn", rate=per_client, duration=duration + 2.0)
        await asyncio.sleep(1.0)  # churn running before the first sample
        prober.send(cmd="measure", samples=samples, interval=interval)
        result = await prober.expect("measured", duration + 60)
        shares = [(cpu_seconds(w.pid) - c) / (time.perf_counter() - begin) for w, c in zip(procs, cpu0, strict=False)]
        self.log(
            f"CPU share while measuring: beacon {shares[0]:.0%}, load clients "
            f"{' '.join(f'{x:.0%}' for x in shares[1:-1])}, prober {shares[-1]:.0%}"
        )
        churn = [await client.expect("churned", 90) for client in beacon["clients"]]
        drops = (udp_drops(ready["port"]) - drops0[0], udp_drops(prober_ready["port"]) - drops0[1])
        self.log(
            f"datagrams dropped by the kernel (receive buffer full) during the run: beacon socket {drops[0]}, "
            f"prober socket {drops[1]}"
        )
        opened = sum(c["opened"] for c in churn)
        closed = sum(c["closed"] for c in churn)
        seconds = max(c["seconds"] for c in churn)
        server = beacon["server"]
        server.send(cmd="stats")
        stats = await server.expect("stats", 30)
        both = result["both"]
        self.log(f"beacon garbage collector during the run: {stats.get('gc')}")
        skipped = sum(c.get("skipped", 0) for c in churn)
        note = (
            f"churn achieved {opened / seconds:.0f} new + {closed / seconds:.0f} closed per s "
            f"({skipped} ticks skipped: clients behind), "
            f"{sum(c['failed'] for c in churn)} failed; {stats['connections']} connections at the end; "
            f"{result['failures']} samples lost; kernel drops at the beacon socket: {drops[0]}"
        )
        self.add(
            Row(
                "beacon",
                f"introduction latency p99 ({result['samples']} samples)",
                both["p99_ms"],
                "ms",
                "Ping->Pong through the beacon, p99, same time",
                result["ping"]["p99_ms"],
                target="p99 < 20 ms on loopback",
                met=both["p99_ms"] < 20.0,
                note=note,
            )
        )
        self.add(
            Row(
                "beacon",
                "introduction latency p50",
                both["p50_ms"],
                "ms",
                "Ping->Pong through the beacon, p50",
                result["ping"]["p50_ms"],
                target="(informative)",
            )
        )
        self.extra["intro_latency"] = {"result": result, "churn": churn}

    # --- beacon: registrations per second on one core --------------------------------------

    async def rate_round(self, variants: dict[str, tuple[str, list[str], list[str]]]) -> dict[str, dict]:
        """All variants at once: their servers share core 0, their clients core 1, so each sees
        the same neighbours and the same noise; each server's CPU time is its own."""
        pin = cpu_count() >= 2
        started: dict[str, tuple[Worker, Worker]] = {}
        for name, (kind, server_args, client_args) in variants.items():
            server, ready = await self.worker(
                f"rate-{name}",
                "server",
                ["--kind", kind, "--uvloop", *server_args],
                core=0 if pin else None,
            )
            client, _ = await self.worker(
                f"rate-load-{name}",
                "load",
                [
                    "--target",
                    f"127.0.0.1:{ready['port']}",
                    f"--fingerprint={ready['fingerprint']}",
                    "--kind",
                    kind,
                    "--uvloop",
                    *client_args,
                ],
                core=1 if pin else None,
            )
            started[name] = (server, client)
        for _, client in started.values():  # warm-up
            client.send(cmd="ramp", count=50, concurrency=8)
        for _, client in started.values():
            await client.expect("ramped", 120)
        count = self.s.rate_count
        cpu0 = {name: cpu_seconds(server.pid) for name, (server, _) in started.items()}
        begin = time.perf_counter()
        for _, client in started.values():
            client.send(cmd="ramp", count=count, concurrency=16)
        finished = {name: await client.expect("ramped", 600) for name, (_, client) in started.items()}
        # the beacon finishes its per-connection work SETTLE_SECONDS after each handshake
        # (beacon.server); count it too
        await asyncio.sleep(4.5)
        results = {}
        for name, (server, _client) in started.items():
            result = finished[name]
            cpu = cpu_seconds(server.pid) - cpu0[name]
            results[name] = {
                "per_cpu": result["opened"] / cpu if cpu else float("nan"),
                "done": result["opened"],
                "failed": result["failed"],
                "wall": result["opened"] / result["seconds"],
                "server_cpu": cpu,
                "seconds": result["seconds"],
            }
        results["_round_seconds"] = time.perf_counter() - begin  # type: ignore[assignment]  # patched for this test or benchmark
        await self.stop_all()
        return results

    async def bench_rate(self) -> None:
        variants = {
            "bare_handshake": ("bare", [], ["--handshake-only"]),
            "beacon": ("beacon", [], []),
        }
        if self.s.variants:
            variants["bare_handshake_stream"] = ("bare", [], [])
            variants["beacon_untrimmed"] = ("beacon", ["--no-trim"], [])
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for round_index in range(self.s.rate_rounds):
            results = await self.rate_round(variants)
            for name in variants:
                runs[name].append(results[name])
            self.log(
                f"rate round {round_index + 1}: "
                + ", ".join(f"{name} {results[name]['per_cpu']:.0f}/CPU-s" for name in variants)
            )

        def med(name: str, key: str) -> float:
            return median([r[key] for r in runs[name]])

        pinned = "servers pinned to core 0, clients to core 1" if cpu_count() >= 2 else "NOT pinned (1 CPU)"
        ratio = median(
            [b["per_cpu"] / h["per_cpu"] for b, h in zip(runs["beacon"], runs["bare_handshake"], strict=False)]
        )
        self.add(
            Row(
                "rate",
                "new registrations per CPU-second of the beacon process (handshake + Hello/Welcome + Announce)",
                med("beacon", "per_cpu"),
                "/s",
                "bare aioquic handshakes per CPU-second of its process",
                med("bare_handshake", "per_cpu"),
                ratio=ratio,
                target=">= 90% of the bare handshake rate",
                met=ratio >= 0.9,
                note=f"{pinned}; the variants run at the same time, sharing the core; median of "
                f"{self.s.rate_rounds} rounds of {self.s.rate_count}",
                samples=[r["per_cpu"] for r in runs["beacon"]],
                baseline_samples=[r["per_cpu"] for r in runs["bare_handshake"]],
            )
        )
        if "bare_handshake_stream" in runs:
            self.add(
                Row(
                    "rate",
                    "bare aioquic handshake + one stream request/answer, per CPU-second",
                    med("bare_handshake_stream", "per_cpu"),
                    "/s",
                    "bare handshakes per CPU-second",
                    med("bare_handshake", "per_cpu"),
                    target="(informative: a registration is a handshake plus one request/answer)",
                )
            )
        if "beacon_untrimmed" in runs:
            self.add(
                Row(
                    "rate",
                    "beacon registrations per CPU-second: quic_tuning on vs off",
                    med("beacon", "per_cpu"),
                    "/s",
                    "TRIM_AFTER_HANDSHAKE = False",
                    med("beacon_untrimmed", "per_cpu"),
                    target="(cost of the memory work)",
                )
            )
        self.extra["rate"] = runs

    # --- peer throughput ---------------------------------------------------------------------

    async def beacon_for_peers(self) -> dict:
        _, ready = await self.worker(
            "beacon-for-peers", "server", ["--kind", "beacon", "--uvloop", "--relay-rate", str(10**9)]
        )
        return ready

    async def peer_pair(self, ready: dict, variant: list[str], relay: bool = False) -> tuple[Worker, Worker, dict]:
        common = ["--beacon-port", str(ready["port"]), f"--fingerprint={ready['fingerprint']}", *variant]
        a, ra = await self.worker("peer-a", "peer", common + (["--relay-only"] if relay else []))
        b, rb = await self.worker("peer-b", "peer", common)
        meeting = f"bench-{os.urandom(6).hex()}"
        a.send(cmd="connect", meeting=meeting, expect=rb["peer_id"], timeout=20)
        b.send(cmd="connect", meeting=meeting, expect=ra["peer_id"], timeout=20)
        connected = await a.expect("connected", 40)
        await b.expect("connected", 40)
        return a, b, connected

    async def interleaved_loopback(self, variant: list[str], size: int) -> Interleaved:
        """A loopback peer pair whose transfers of ``size`` bytes a blocking caller (another
        thread) starts one at a time with ``.transfer()``; its workers stay up until
        :meth:`stop_all`."""
        ready = await self.beacon_for_peers()
        a, b, _ = await self.peer_pair(ready, variant)
        return Interleaved(a, b, size, asyncio.get_running_loop())

    async def bulk(self, variant: list[str], size: int, relay: bool = False) -> dict:
        ready = await self.beacon_for_peers()
        a, b, connected = await self.peer_pair(ready, variant, relay)
        cpu: dict[str, float] = {}
        rates, sent = await self.transfers(a, size, cpu={"sender": a, "receiver": b}, cpu_out=cpu)
        return {
            "path": connected["path"],
            "datagram_size": sent.get("datagram_size"),
            "sent": sent,
            **bulk_figures(size, rates, cpu),
        }

    async def plain_bulk(self, size: int, dgram: int = 0) -> dict:
        sized = ["--dgram", str(dgram)] if dgram else []
        server, ready = await self.worker("quic-server", "quicbulk", ["--role", "server", *sized])
        client, _ = await self.worker(
            "quic-client", "quicbulk", ["--role", "client", "--port", str(ready["port"]), *sized]
        )
        cpu: dict[str, float] = {}
        rates, _ = await self.transfers(client, size, cpu={"sender": client, "receiver": server}, cpu_out=cpu)
        return bulk_figures(size, rates, cpu)

    async def transfers(
        self, sender: Worker, size: int, cpu: dict[str, Worker] | None = None, cpu_out: dict[str, float] | None = None
    ) -> tuple[list[float], dict]:
        """``bulk_repeat`` transfers of ``size`` bytes by ``sender``: MB/s each, and the last
        "sent" event; then every worker is stopped. ``cpu``: workers whose CPU seconds during
        the transfers go into ``cpu_out`` (same keys)."""
        cpu0 = {name: cpu_seconds(w.pid) for name, w in (cpu or {}).items()}
        sender.send(cmd="send", size=size, repeat=self.s.bulk_repeat, timeout=240)
        rates, sent = [], {}
        for _ in range(self.s.bulk_repeat):
            sent = await sender.expect("sent", 260)
            rates.append(size / sent["seconds"] / MB)
        if cpu_out is not None:
            cpu_out.update({name: cpu_seconds(w.pid) - cpu0[name] for name, w in (cpu or {}).items()})
        await self.stop_all()
        return rates, sent

    SHIPPED = "library (asyncio's loop)"

    async def bench_throughput(self) -> None:
        size = self.s.bulk_bytes
        self.log(f"throughput: plain aioquic (defaults) vs discretpeer, {size / MB:.0f} MB x {self.s.bulk_repeat}")
        plain = await self.plain_bulk(size)
        self.log(f"plain aioquic: {plain['rates']}")
        variants = {self.SHIPPED: [], "library on uvloop": ["--uvloop"]}
        if self.s.variants:
            variants["library without path-MTU probing (1350-byte datagrams)"] = ["--no-pmtu"]
            variants["library, uvloop, without path-MTU probing"] = ["--uvloop", "--no-pmtu"]
            variants["library, uvloop, without the pacer burst"] = ["--uvloop", "--no-pacer-burst"]
            variants["library, uvloop, a transmit per datagram"] = ["--uvloop", "--no-coalesce"]
        results = {}
        for name, variant in variants.items():
            results[name] = await self.bulk(variant, size)
            self.log(f"{name}: {[round(r, 1) for r in results[name]['rates']]} MB/s ({results[name]['path']})")
        for name, result in results.items():
            shipped = name == self.SHIPPED
            self.add(
                Row(
                    "throughput",
                    f"one stream, two peer processes: {name}",
                    result["median"],
                    "MB/s",
                    "plain aioquic client/server, default settings",
                    plain["median"],
                    target=">= 40 MB/s and >= 3x the baseline" if shipped else "(informative)",
                    met=(result["median"] >= 40 and result["median"] >= 3 * plain["median"]) if shipped else None,
                    note=f"datagram sizes {result.get('datagram_size')}",
                    samples=result["rates"],
                    baseline_samples=plain["rates"],
                )
            )
        self.extra["throughput"] = {"plain": plain, **results}

    MTU_SIZES = (1472, 1350)

    async def bench_mtu(self) -> None:
        """One stream at Ethernet sizes (``Peer(max_datagram_size=N)``) against plain aioquic at
        the same datagram size (and py-libp2p, when its scratch venv is given), in alternating
        rounds so that every figure and its baseline see the same load."""
        size = self.s.bulk_bytes // 2
        rounds = 2 if self.s.quick else 3
        self.log(
            f"mtu: one stream at {self.MTU_SIZES} bytes, {size / MB:.0f} MB x {self.s.bulk_repeat}, "
            f"{rounds} alternating rounds"
        )
        kinds: dict[str, Any] = {
            "plain aioquic": lambda dgram: self.plain_bulk(size, dgram),
            SHIPPED: lambda dgram: self.bulk(["--dgram", str(dgram)], size),
            "library on uvloop": lambda dgram: self.bulk(["--dgram", str(dgram), "--uvloop"], size),
            "library on aioquic (asyncio's loop)": lambda dgram: self.bulk(
                ["--dgram", str(dgram), "--stack", "aioquic"], size
            ),
            "library on aioquic, uvloop": lambda dgram: self.bulk(
                ["--dgram", str(dgram), "--stack", "aioquic", "--uvloop"], size
            ),
            "library (asyncio), no GSO/GRO": lambda dgram: self.bulk(["--dgram", str(dgram), "--no-gso"], size),
            "library (asyncio), qh3's own pacer only": lambda dgram: self.bulk(
                ["--dgram", str(dgram), "--no-qh3-pacer"], size
            ),
            "library (asyncio), one datagram per wakeup": lambda dgram: self.bulk(
                ["--dgram", str(dgram), "--no-batch-reads", "--no-gso"], size
            ),
            "library (asyncio), routing by header parse": lambda dgram: self.bulk(
                ["--dgram", str(dgram), "--no-short-routing"], size
            ),
        }
        rates: dict[tuple[int, str], list[float]] = {}
        # MB per CPU-second of the busier of the two processes: what one stream would move with a
        # core per side to itself; far steadier than MB/s on a shared machine
        per_cpu: dict[tuple[int, str], list[float]] = {}
        for round_index in range(rounds):
            for dgram in self.MTU_SIZES:
                for kind, run in kinds.items():
                    result = await run(dgram)
                    rates.setdefault((dgram, kind), []).extend(result["rates"])
                    if result.get("mb_per_cpu"):
                        per_cpu.setdefault((dgram, kind), []).append(min(result["mb_per_cpu"].values()))
                    if result.get("datagram_size") not in (None, dgram):
                        raise RuntimeError(
                            f"{kind} at {dgram}: the peers used {result['datagram_size']}-byte datagrams"
                        )
            self.log(
                f"mtu round {round_index + 1}: "
                + ", ".join(
                    f"{d}/{k}: {median(v):.1f} MB/s, {median(per_cpu.get((d, k), [0])):.1f} MB/CPU-s"
                    for (d, k), v in rates.items()
                )
            )
        # (samples, row label, unit, the shipped variant's target: 2x plain aioquic and at least floor)
        metrics = (
            (rates, "one stream, {}-byte datagrams", "MB/s", 50.0, ">= 2x plain aioquic and >= 50 MB/s"),
            (per_cpu, "MB per CPU-second of the busier side, {}-byte datagrams", "MB/CPU-s", 0, ">= 2x plain aioquic"),
        )
        for samples, label, unit, floor, target in metrics:
            for dgram in self.MTU_SIZES:
                plain = samples[(dgram, "plain aioquic")]
                for kind in [k for k in kinds if k != "plain aioquic"]:
                    value = samples[(dgram, kind)]
                    shipped = kind == SHIPPED and dgram == 1472
                    note = f"installed package: {self.installed is not None}; {len(value)} transfers"
                    self.add(
                        Row(
                            "mtu",
                            f"{label.format(dgram)}: {kind}",
                            median(value),
                            unit,
                            f"plain aioquic, max_datagram_size={dgram}",
                            median(plain),
                            target=target if shipped else "(informative)",
                            met=(median(value) >= 2 * median(plain) and median(value) >= floor) if shipped else None,
                            samples=value,
                            baseline_samples=plain,
                            note=note if samples is rates else "",
                        )
                    )
        self.extra["mtu"] = {
            "rates": {f"{d}/{k}": v for (d, k), v in rates.items()},
            "mb_per_cpu": {f"{d}/{k}": v for (d, k), v in per_cpu.items()},
        }
        await self.mtu_libp2p(size)

    async def qh3_bulk(self, size: int, dgram: int, download: bool) -> dict:
        assert self.qh3_python is not None
        sized = ["--dgram", str(dgram), *(["--download"] if download else [])]
        server, ready = await self.worker(
            "qh3-server", "qh3bench", ["--role", "server", *sized], python=self.qh3_python
        )
        client, _ = await self.worker(
            "qh3-client",
            "qh3bench",
            ["--role", "client", "--port", str(ready["port"]), *sized],
            python=self.qh3_python,
        )
        cpu: dict[str, float] = {}
        rates, _ = await self.transfers(client, size, cpu={"client": client, "server": server}, cpu_out=cpu)
        return bulk_figures(size, rates, cpu)

    async def stack_at_1472(self, size: int) -> None:
        """The stack the proposal names (qh3 2.x, scratch venv) at 1472 bytes, both directions (its
        client reads with UDP GRO in batches, its server one datagram per read), next to plain
        aioquic and the library at 1472 in alternating rounds."""
        assert self.qh3_python is not None
        dgram = 1472
        kinds: dict[str, Any] = {
            "qh3 plain, client receives (batched reads, GRO)": lambda: self.qh3_bulk(size, dgram, True),
            "qh3 plain, server receives (a read per datagram)": lambda: self.qh3_bulk(size, dgram, False),
            "plain aioquic": lambda: self.plain_bulk(size, dgram),
            "library (asyncio's loop)": lambda: self.bulk(["--dgram", str(dgram)], size),
        }
        rates: dict[str, list[float]] = {}
        per_cpu: dict[str, list[float]] = {}
        for _ in range(2 if self.s.quick else 3):
            for kind, run in kinds.items():
                result = await run()
                rates.setdefault(kind, []).extend(result["rates"])
                per_cpu.setdefault(kind, []).append(min(result["mb_per_cpu"].values()))
        self.log("stack at 1472: " + ", ".join(f"{k}: {median(v):.1f} MB/s" for k, v in rates.items()))
        for samples, label, unit in (
            (rates, "one stream, 1472-byte datagrams", "MB/s"),
            (per_cpu, "MB per CPU-second of the busier side, 1472-byte datagrams", "MB/CPU-s"),
        ):
            for kind in [k for k in kinds if k != "plain aioquic"]:
                self.add(
                    Row(
                        "stack",
                        f"{label}: {kind}",
                        median(samples[kind]),
                        unit,
                        "plain aioquic, max_datagram_size=1472, same rounds",
                        median(samples["plain aioquic"]),
                        target="(proposal: the stack for the data path)",
                        samples=samples[kind],
                        baseline_samples=samples["plain aioquic"],
                    )
                )
        self.extra["stack_1472"] = {"rates": rates, "mb_per_cpu": per_cpu}

    async def libp2p_bulk(self, transport: str, size: int, dgram: int) -> list[float]:
        assert self.libp2p_python is not None
        sized = ["--dgram", str(dgram)] if dgram else []
        _, ready = await self.worker(
            f"libp2p-{transport}-server",
            "libp2pbench",
            ["--role", "server", "--transport", transport, *sized],
            python=self.libp2p_python,
        )
        client, _ = await self.worker(
            f"libp2p-{transport}-client",
            "libp2pbench",
            ["--role", "client", "--transport", transport, "--addr", ready["addr"], *sized],
            python=self.libp2p_python,
        )
        return (await self.transfers(client, size))[0]

    async def mtu_libp2p(self, size: int) -> None:
        """py-libp2p 0.8 (scratch venv): its QUIC transport (on aioquic) at 1472 bytes and its TCP
        transport (Noise + Yamux), next to plain aioquic and the library at 1472, same run."""
        if not self.libp2p_python:
            self.log("mtu: py-libp2p skipped: no scratch venv (--libp2p to build one, or --libp2p-python PATH)")
            return
        size = min(size, 8_000_000)  # py-libp2p QUIC moves ~3 MB/s here
        rates: dict[str, list[float]] = {}
        for _ in range(2):
            for name, run in (
                ("libp2p quic", lambda: self.libp2p_bulk("quic", size, 1472)),
                ("libp2p tcp", lambda: self.libp2p_bulk("tcp", size, 0)),
                ("plain", lambda: self.plain_bulk(size, 1472)),
                ("library", lambda: self.bulk(["--dgram", "1472"], size)),
            ):
                result = await run()
                rates.setdefault(name, []).extend(result if isinstance(result, list) else result["rates"])
        library = median(rates["library"])
        for name, label in (
            ("libp2p quic", "py-libp2p 0.8 QUIC (aioquic), max_datagram_size=1472"),
            ("libp2p tcp", "py-libp2p 0.8 TCP (Noise + Yamux)"),
        ):
            self.add(
                Row(
                    "mtu",
                    f"one stream: library at 1472 vs {label}",
                    library,
                    "MB/s",
                    label,
                    median(rates[name]),
                    target="(reference)",
                    note=f"plain aioquic at 1472 in the same rounds: {median(rates['plain']):.1f} MB/s",
                    samples=rates["library"],
                    baseline_samples=rates[name],
                )
            )
        self.extra["mtu_libp2p"] = rates

    async def bench_pyc(self) -> None:
        """The same installed package, one stream at 1350 bytes, with its ``.pyc`` files (as pip
        wrote them) and without (PYTHONPYCACHEPREFIX pointing at an empty directory and
        PYTHONDONTWRITEBYTECODE=1: every module, aioquic's too, compiled from source at import),
        in alternating rounds."""
        size = self.s.bulk_bytes // 2
        rounds = 3 if self.s.quick else 6
        empty = Path(tempfile.mkdtemp(prefix="dpb-nopyc-"))
        self.temp_dirs.append(empty)
        variants = {
            "with .pyc": {},
            "compiled at import": {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(empty)},
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        per_cpu: dict[str, dict[str, list[float]]] = {name: {"sender": [], "receiver": []} for name in variants}
        for _ in range(rounds):
            for name, env in variants.items():
                self.worker_env = env
                try:
                    result = await self.bulk(["--dgram", "1350"], size)
                    rates[name].extend(result["rates"])
                    for side, value in result["mb_per_cpu"].items():
                        per_cpu[name][side].append(value)
                    sent = result["sent"]
                    self.log(
                        f"pyc {name}: {[round(r, 1) for r in result['rates']]} MB/s, MB per CPU-s "
                        f"{ {k: round(v, 1) for k, v in result['mb_per_cpu'].items()} }; sender GC "
                        f"collections {sent.get('gc')}, tracked objects {sent.get('objects')}"
                    )
                finally:
                    self.worker_env = {}
            self.log("pyc: " + ", ".join(f"{k}: {median(v):.1f}" for k, v in rates.items()))
        self.add(
            Row(
                "pyc",
                "one stream at 1350 B, installed package loaded from its .pyc",
                median(rates["with .pyc"]),
                "MB/s",
                "the same, compiled from source at import",
                median(rates["compiled at import"]),
                target="(the .pyc effect)",
                note=f"{rounds} alternating rounds",
                samples=rates["with .pyc"],
                baseline_samples=rates["compiled at import"],
            )
        )
        for side in ("sender", "receiver"):
            self.add(
                Row(
                    "pyc",
                    f"MB per CPU-second of the {side}, loaded from .pyc",
                    median(per_cpu["with .pyc"][side]),
                    "MB/CPU-s",
                    "the same, compiled at import",
                    median(per_cpu["compiled at import"][side]),
                    target="(the .pyc effect, CPU cost)",
                    samples=per_cpu["with .pyc"][side],
                    baseline_samples=per_cpu["compiled at import"][side],
                )
            )
        self.extra["pyc"] = {"rates": rates, "mb_per_cpu": per_cpu}

    async def bench_peermem(self) -> None:
        """RSS per idle, handshaken peer connection on qh3 (the default) against aioquic, each
        stack in its own process (benchmarks/workers/peermem.py: no sockets, both ends in it)."""
        pairs = 150 if self.s.quick else 500
        kb: dict[str, float] = {}
        for stack in ("qh3", "aioquic"):
            _, ready = await self.worker(f"peermem-{stack}", "peermem", ["--stack", stack, "--pairs", str(pairs)])
            kb[stack] = ready["per_connection_kb"]
            self.log(f"peermem {stack} ({ready['connection_class']}): {kb[stack]:.1f} KB per connection")
            await self.stop_all()
        self.add(
            Row(
                "peermem",
                "RSS per idle peer connection, qh3 (default)",
                kb["qh3"],
                "KB",
                "the same on aioquic",
                kb["aioquic"],
                target="(no regression: <= 1x)",
                met=kb["qh3"] <= kb["aioquic"],
                note=f"{2 * pairs} connections per stack, both ends in one process",
            )
        )
        self.extra["peermem"] = kb

    async def bench_relay(self) -> None:
        size = self.s.relay_bytes
        pairs = {self.SHIPPED: [], "library on uvloop": ["--uvloop"]}
        out = {}
        for name, variant in pairs.items():
            relay = await self.bulk(variant, size, relay=True)
            direct = await self.bulk(variant, size)
            self.log(f"relay {name}: relay {relay['rates']} ({relay['path']}), direct {direct['rates']}")
            out[name] = {"relay": relay, "direct": direct}
            self.add(
                Row(
                    "relay",
                    f"one stream through the beacon's relay: {name}",
                    relay["median"],
                    "MB/s",
                    "the direct path, same settings",
                    direct["median"],
                    target=">= 50% of direct",
                    met=relay["median"] >= 0.5 * direct["median"] if relay["path"] == "relay" else False,
                    note=f"paths: {relay['path']} / {direct['path']}; beacon relay quota raised to 1 GB/s "
                    f"(default relay_rate_bytes_per_second = 1 MB/s per peer)",
                    samples=relay["rates"],
                    baseline_samples=direct["rates"],
                )
            )
        self.extra["relay"] = out

    async def bench_attacks(self) -> None:
        from benchmarks import attacks

        await attacks.run(self)

    # --- NAT lab ----------------------------------------------------------------------------

    async def bench_natlab(self) -> None:
        runs = 8 if self.s.quick else 30
        self.log(f"natlab: {runs} meetings port_restricted <-> port_restricted, 20 ms per internet link")
        result = await asyncio.to_thread(natlab_meetings, runs, self.log_dir)
        times, rtts = result["times"], result["rtts"]
        rtt = median(rtts)
        p50, p99 = median(times), percentile(times, 99)
        note = (
            f"{len(times)} meetings, beacon + peers as processes; RTT = the peers' QUIC smoothed RTT on the "
            f"same connections (p50 {rtt:.1f} ms; 4 x 20 ms configured)"
        )
        self.add(
            Row(
                "natlab",
                "introduction -> verified direct connection, p50",
                p50,
                "ms",
                "the path's RTT",
                rtt,
                target="p50 <= 3 RTT",
                met=p50 <= 3 * rtt,
                note=note,
                samples=times,
                baseline_samples=rtts,
            )
        )
        self.add(
            Row(
                "natlab",
                "introduction -> verified direct connection, p99",
                p99,
                "ms",
                "the path's RTT",
                rtt,
                target="p99 <= 6 RTT",
                met=p99 <= 6 * rtt,
                samples=times,
                baseline_samples=rtts,
            )
        )
        self.extra["natlab"] = result

    # --- issue 14: the beacon over TLS/TCP ------------------------------------------------------

    async def bench_tcpfallback(self) -> None:
        relay = await self.tcp_relay()
        memory = await self.tcp_memory()
        lab = await self.tcp_natlab()
        self.extra["tcpfallback"] = {"relay": relay, "natlab": lab, "memory": memory}

    async def tcp_relay(self) -> dict:
        size = self.s.relay_bytes
        cases = {
            "UDP relay (two UDP legs)": ([], []),
            "one TCP leg": (["--tcp-only"], []),
            "TCP <-> TCP": (["--tcp-only"], ["--tcp-only"]),
        }
        relay: dict[str, dict] = {}
        for name, (flags_a, flags_b) in cases.items():
            ready = await self.beacon_for_peers()
            common = ["--beacon-port", str(ready["port"]), f"--fingerprint={ready['fingerprint']}"]
            a, ra = await self.worker("peer-a", "peer", [*common, "--relay-only", *flags_a])
            b, rb = await self.worker("peer-b", "peer", [*common, *flags_b])
            meeting = f"bench-{os.urandom(6).hex()}"
            a.send(cmd="connect", meeting=meeting, expect=rb["peer_id"], timeout=20)
            b.send(cmd="connect", meeting=meeting, expect=ra["peer_id"], timeout=20)
            connected = await a.expect("connected", 40)
            other = await b.expect("connected", 40)
            rates, _ = await self.transfers(a, size)
            relay[name] = {
                "rates": rates,
                "median": median(rates),
                "path": connected["path"],
                "transports": [connected.get("transport"), other.get("transport")],
            }
            self.log(f"relay {name}: {[round(r, 1) for r in rates]} MB/s, transports {relay[name]['transports']}")
        base = relay["UDP relay (two UDP legs)"]
        for name in ("one TCP leg", "TCP <-> TCP"):
            result = relay[name]
            self.add(
                Row(
                    "tcpfallback",
                    f"one stream through the relay, {name}",
                    result["median"],
                    "MB/s",
                    "the UDP relay, same run",
                    base["median"],
                    target=">= 50 % of the UDP relay" if name == "one TCP leg" else "(report)",
                    met=result["median"] >= 0.5 * base["median"] if name == "one TCP leg" else None,
                    note=f"beacon transports {result['transports']}; relay quota raised to 1 GB/s",
                    samples=result["rates"],
                    baseline_samples=base["rates"],
                )
            )
        return relay

    async def tcp_memory(self) -> dict:
        n = self.s.peers
        self.log(f"tcpfallback: beacon RSS with {n} idle peers, UDP (QUIC) first, then TLS/TCP")
        udp = await self.server_ramp("beacon", [], n)
        await self.stop_all()
        tcp = await self.server_ramp("beacon", [], n, load="tcpload")
        await self.stop_all()
        self.add(
            Row(
                "tcpfallback",
                f"RSS per idle TCP-registered peer ({tcp['held']} peers)",
                tcp["per_peer"] / 1024,
                "KB",
                "per idle UDP (QUIC) peer, same run",
                udp["per_peer"] / 1024,
                target="(report)",
                note=f"beacon RSS {tcp['rss0'] / MB:.0f} -> {tcp['rss1'] / MB:.0f} MB (TCP), "
                f"{udp['rss0'] / MB:.0f} -> {udp['rss1'] / MB:.0f} MB (UDP); failed {tcp['failed']} / {udp['failed']}",
            )
        )
        return {
            k: {x: y for x, y in r.items() if x not in ("server", "clients", "ready")}
            for k, r in (("udp", udp), ("tcp", tcp))
        }

    async def tcp_natlab(self) -> dict:
        runs = 8 if self.s.quick else 30
        self.log(f"tcpfallback: {runs} meetings udp_blocked <-> port_restricted in the NAT lab, 20 ms per link")
        lab = await asyncio.to_thread(natlab_meetings, runs, self.log_dir, "udp_blocked", "relay")
        times = lab["times"]
        p50, p99 = median(times), percentile(times, 99)
        self.add(
            Row(
                "tcpfallback",
                "NAT lab udp_blocked <-> port_restricted: introduction -> verified, p50",
                p50,
                "ms",
                "the path's RTT",
                median(lab["rtts"]),
                target="p50 <= 1500 ms",
                met=p50 <= 1500,
                note=f"{len(times)} meetings, relay with one TCP and one UDP leg",
                samples=times,
            )
        )
        self.add(
            Row(
                "tcpfallback",
                "NAT lab udp_blocked <-> port_restricted: introduction -> verified, p99",
                p99,
                "ms",
                "the path's RTT",
                median(lab["rtts"]),
                target="p99 <= 3000 ms",
                met=p99 <= 3000,
                samples=times,
            )
        )
        return lab

    async def bench_natbulk(self) -> None:
        """One stream through the NAT lab (1500-byte veth links, 20 ms per internet link), direct
        and relayed, against the loopback figure at the same datagram size, in the same run."""
        if self.installed is None:
            raise RuntimeError("natbulk runs the installed package only (drop --from-checkout)")
        # long enough that a transfer is mostly steady state: each one pays one round trip for its
        # answer and the first one slow start, which at 82 ms weigh on a short one (24 MB at
        # 250 MB/s takes 96 ms, plus 82 ms of round trip; 24 MB was the size until the tenth session)
        size = 16_000_000 if self.s.quick else 64_000_000
        repeat = self.s.bulk_repeat
        dgram = 1472
        self.log(
            f"natbulk: loopback at {dgram} bytes, then the NAT lab direct and relayed, {size / MB:.0f} MB x {repeat}"
        )
        results: dict[str, Any] = {}
        # (stack, receive windows, one-way delay per link (None: the lab's 20 ms), rate of both
        # homes' lines in Mbit/s (None: the veths' own), other Tuning fields, label): each stack
        # against its own loopback figure
        unpaced = {"qh3_pacer": False}
        from discretpeer.tuning import DEFAULT_TUNING, parse_tuning

        # the fields for_path changes, as the lab's workers take them (Tuning fields by name)
        sized = parse_tuning([f"path={LAB_PATH}"])
        path_windows = {name: value for name, value in vars(sized).items() if value != getattr(DEFAULT_TUNING, name)}
        # what Tuning.write_slice is worth where it acts: a flight large enough that the water
        # marks never stop the writer
        unsliced = {**path_windows, "write_slice": 0}
        labs: list[tuple[str, int, float | None, float | None, dict[str, Any], str]] = [
            # the lab without its delay first: what its NATs, veths and forwarding cost against
            # loopback, and what the delayed rows are held against besides loopback
            ("qh3", 0, 0.0, None, {}, "on qh3 (default), default windows, no delay"),
            ("qh3", 0, None, None, {}, "on qh3 (default), default windows"),
            # on qh3 the lab's flight peaks at about half the stream window: windows sized for the
            # path (Tuning.for_path: twice rate x RTT at loopback's rate and the lab's loaded RTT)
            ("qh3", 0, None, None, path_windows, f"on qh3, windows for the path ({LAB_PATH})"),
            ("qh3", 0, None, None, unsliced, f"on qh3, windows for the path ({LAB_PATH}), writer slices off"),
            # what discretpeer.send_pacer is worth (qh3's own pacer lets a whole window go at once)
            ("qh3", 0, None, None, unpaced, "on qh3, default windows, qh3's own pacer only"),
            # a home line's bottleneck (tbf, 80 ms drop-tail queue): does one stream fill it?
            ("qh3", 0, None, LINE_MBIT, {}, f"on qh3 (default), default windows, {LINE_MBIT:g} Mbit/s lines"),
            ("qh3", 0, None, LINE_MBIT, unpaced, f"on qh3, qh3's own pacer only, {LINE_MBIT:g} Mbit/s lines"),
            ("aioquic", 0, 0.0, None, {}, "on aioquic, default windows, no delay"),
            ("aioquic", 0, None, None, {}, "on aioquic, default windows"),
            ("aioquic", 16 * 1024 * 1024, None, None, {}, "on aioquic, 16 MB stream windows"),
            ("aioquic", 0, None, LINE_MBIT, {}, f"on aioquic, default windows, {LINE_MBIT:g} Mbit/s lines"),
        ]
        loopback: dict[str, dict[str, Any]] = {}
        undelayed: dict[str, float] = {}  # each stack's direct MB/s in the lab without its delay
        for stack, window, delay_ms, rate_mbit, tuned, label in labs:
            fresh = stack not in loopback  # its loopback figure is measured just now
            if fresh:
                loopback[stack] = await self.bulk(["--dgram", str(dgram), "--stack", stack], size)
                loop = loopback[stack]
                results[f"loopback {stack}"] = {"rates": loop["rates"], "mb_per_cpu": loop["mb_per_cpu"]}
                self.log(
                    f"natbulk loopback on {stack}: {[round(r, 2) for r in loop['rates']]} MB/s, "
                    f"{min(loop['mb_per_cpu'].values(), default=0.0):.1f} MB per CPU-s"
                )
            changes = {"quic_stack": stack, **tuned}
            moved = size // 4 if rate_mbit else size  # 16 MB at 12.5 MB/s: 1.3 s per transfer
            for_path = tuned in (path_windows, unsliced)
            if for_path:
                # at ~200 MB/s, 64 MB take 0.32 s: the answer's round trip (~0.1 s) alone would
                # hold the timed rate to ~0.75x of what the path carries, whatever the windows
                moved = 4 * size
            interleaved: Interleaved | None = None
            if not rate_mbit:
                # the baseline: a loopback transfer of the same size (and windows) just before each
                # of the lab's, alternating: this machine's loopback figure moved 2x between runs
                # within the hour (111-224 MB/s), and within a row it moves with the lab's
                sized_as = ["--path", LAB_PATH] if for_path else []  # the same windows
                interleaved = await self.interleaved_loopback(
                    ["--dgram", str(dgram), "--stack", stack, *sized_as], moved
                )
            try:
                lab = await asyncio.to_thread(
                    natlab_bulk,
                    self.installed,
                    self.log_dir,
                    moved,
                    repeat,
                    dgram,
                    window,
                    changes,
                    delay_ms,
                    rate_mbit,
                    before_each=interleaved.transfer if interleaved is not None else None,
                )
            finally:
                await self.stop_all()
            adjacent = interleaved.result() if interleaved is not None else loopback[stack]
            loop_rates = adjacent["rates"]
            loop_per_cpu = min(adjacent["mb_per_cpu"].values(), default=0.0)  # the busier side's
            results[label] = {**lab, "loopback_rates": loop_rates}
            for kind in ("direct", "relay"):
                self.log(f"natbulk {label}, {kind}: {natbulk_summary(lab[kind])}")
            direct, relay = median(lab["direct"]["rates"]), median(lab["relay"]["rates"])
            if delay_ms == 0.0 and not rate_mbit and not tuned and not window:
                undelayed[stack] = direct
            # what the path's delay costs, apart from the lab's forwarding (which varies by run)
            against_undelayed = (
                f"; {direct / undelayed[stack]:.2f}x of the lab without its delay"
                if stack in undelayed and delay_ms != 0.0 and not rate_mbit
                else ""
            )
            sustained = median(lab["direct"]["sustained_rates"] or [float("nan")])
            sustained_relay = median(lab["relay"]["sustained_rates"] or [float("nan")])
            if rate_mbit:  # against the line: what a user on such a plan gets from one stream
                line = rate_mbit * 1e6 / 8 / MB
                if direct > 1.05 * line:
                    raise RuntimeError(f"natbulk {label}: {direct:.1f} MB/s through a {line:.1f} MB/s line")
                baseline_name, baseline, baseline_samples = f"the line ({rate_mbit:g} Mbit/s, IP bytes)", line, []
                target, met = ">= 80% of the line", direct >= 0.8 * line
            else:
                baseline_name = f"loopback on {stack}, same size ({dgram} B), same run"
                baseline, baseline_samples = median(loop_rates), loop_rates
                target, met = ">= 80% of loopback", direct >= 0.8 * median(loop_rates)
            self.add(
                Row(
                    "natbulk",
                    f"NAT lab, one stream direct, {label}",
                    direct,
                    "MB/s",
                    baseline_name,
                    baseline,
                    target=target,
                    met=met,
                    note=f"{moved / MB:.0f} MB per transfer, request to answer; sustained (the receiver's second "
                    f"half of each): direct {sustained:.1f} MB/s, relayed {sustained_relay:.1f}; "
                    f"RTT {lab['direct']['rtt_ms']:.0f} ms, datagrams {lab['direct']['datagram_size']} B, "
                    + delayer_note(lab["backend"], lab["direct"])
                    + f"; {natbulk_summary(lab['direct'], rates=False)}; loopback {loop_per_cpu:.1f} MB per CPU-s"
                    + against_undelayed,
                    samples=lab["direct"]["rates"],
                    baseline_samples=baseline_samples,
                )
            )
            self.add(
                Row(
                    "natbulk",
                    f"NAT lab, one stream through the relay, {label}",
                    relay,
                    "MB/s",
                    "NAT lab direct, same run",
                    direct,
                    target=">= 50% of direct",
                    met=relay >= 0.5 * direct,
                    note=f"RTT {lab['relay']['rtt_ms']:.0f} ms, datagrams {lab['relay']['datagram_size']} B; "
                    f"{natbulk_summary(lab['relay'], rates=False)}",
                    samples=lab["relay"]["rates"],
                    baseline_samples=lab["direct"]["rates"],
                )
            )
        self.extra["natbulk"] = results

    async def bench_birthday(self) -> None:
        from benchmarks.birthday import birthday_meetings

        runs = 8 if self.s.quick else 30
        self.log(f"birthday: {runs} meetings symmetric <-> port_restricted (hard-NAT probing), 20 ms per link")
        result = await asyncio.to_thread(birthday_meetings, runs, self.log_dir)
        meetings = result["meetings"]
        times = [m["direct_ms"] for m in meetings if m["direct"]]
        share = len(times) / len(meetings)
        relay = [m["first_verified_ms"] for m in meetings if m["first_path"] == "relay"]
        self.add(
            Row(
                "birthday",
                "symmetric <-> port_restricted ending direct",
                100 * share,
                "%",
                target=">= 90 %",
                met=share >= 0.9,
                note=f"{len(times)}/{len(meetings)} meetings; packets per attempt: symmetric side p50 "
                f"{median([m['packets_symmetric_side'] for m in meetings]):.0f}, other side p50 "
                f"{median([m['probes_other_side'] for m in meetings]):.0f}",
            )
        )
        if times:
            self.add(
                Row(
                    "birthday",
                    "introduction -> direct, p50",
                    median(times),
                    "ms",
                    "first verified (relay)",
                    median(relay) if relay else None,
                    target="p50 <= 3000 ms",
                    met=median(times) <= 3000,
                    samples=times,
                    baseline_samples=relay,
                )
            )
        self.extra["birthday"] = result

    # --- TCP forwarding ----------------------------------------------------------------------

    async def tcp_transfer(self, source: Worker, port: int, size: int, repeat: int) -> list[float]:
        source.send(cmd="probe", port=port)  # warm-up: connection set up, tunnel answered
        probe = await source.expect("probed", 40)
        if not probe.get("ok"):
            raise WorkerError(f"nothing forwards on port {port}: {probe.get('error')}")
        source.send(cmd="send", port=port, size=size, repeat=repeat, timeout=240)
        rates = []
        for _ in range(repeat):
            sent = await source.expect("sent", 260)
            rates.append(size / sent["seconds"] / MB)
        await source.expect("done", 30)
        return rates

    async def bench_tcp(self) -> None:
        size = self.s.tcp_bytes
        repeat = self.s.bulk_repeat
        _, sink = await self.worker("tcp-sink", "tcpbench", ["--role", "sink"])
        source, _ = await self.worker("tcp-source", "tcpbench", ["--role", "source"])
        results: dict[str, Any] = {}
        self.log(f"tcp: raw copy, {size / MB:.0f} MB x {repeat}")
        results["raw"] = await self.tcp_transfer(source, sink["port"], size, repeat)
        ssh = await self.start_ssh_tunnel(sink["port"])
        if ssh is not None:
            try:
                results["ssh"] = await self.tcp_transfer(source, ssh["port"], size, repeat)
            finally:
                await self.stop_ssh(ssh)
        else:
            results["ssh"] = None
        ready = await self.beacon_for_peers()
        cli_variants: dict[str, list[str]] = {
            "discretpeer forward (the CLI, uvloop)": [],
            "discretpeer forward (the CLI, DISCRETPEER_LOOP=asyncio)": ["--asyncio"],
            "discretpeer forward (the CLI, uvloop), --max-datagram-size 1472": ["--dgram", "1472"],
            "discretpeer forward (the CLI, asyncio), --max-datagram-size 1472": ["--asyncio", "--dgram", "1472"],
        }
        for name, variant in cli_variants.items():
            try:
                port = await self.start_cli_tunnel(ready, sink["port"], variant)
                results[name] = await self.tcp_transfer(source, port, size, repeat)
            except (TimeoutError, WorkerError, OSError) as exc:
                self.log(f"{name}: failed ({exc}); measuring the in-benchmark forwarder instead")
                results[name] = None
        if not any(results[name] for name in cli_variants):
            port = await self.start_bench_forwarder(ready, sink["port"], [])
            results["minimal forwarder on PeerConnection streams (CLI not usable)"] = await self.tcp_transfer(
                source, port, size, repeat
            )
        await self.stop_all()
        raw = median(results["raw"])
        ssh_rate = median(results["ssh"]) if results["ssh"] else None
        self.add(
            Row(
                "tcp", "raw TCP copy on loopback (no tunnel)", raw, "MB/s", target="(reference)", samples=results["raw"]
            )
        )
        if ssh_rate is not None:
            self.add(
                Row(
                    "tcp",
                    "ssh -L tunnel (OpenSSH, loopback)",
                    ssh_rate,
                    "MB/s",
                    "raw TCP copy",
                    raw,
                    target="(reference)",
                    samples=results["ssh"],
                )
            )
        for name, rates in results.items():
            if name in ("raw", "ssh") or not rates:
                continue
            value = median(rates)
            self.add(
                Row(
                    "tcp",
                    f"TCP through {name}",
                    value,
                    "MB/s",
                    "ssh -L tunnel" if ssh_rate else "raw TCP copy",
                    ssh_rate or raw,
                    target="report the ratios",
                    note=f"vs raw TCP copy: {value / raw:.3f}x",
                    samples=rates,
                    baseline_samples=results["ssh"] or results["raw"],
                )
            )
        self.extra["tcp"] = results

    async def start_ssh_tunnel(self, sink_port: int) -> dict | None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not (shutil.which("ssh") and os.path.exists(sshd) and shutil.which("ssh-keygen")):
            self.log("ssh/sshd not installed: no ssh -L baseline")
            return None
        tmp = Path(tempfile.mkdtemp(prefix="dpb-ssh-"))
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
        (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
        os.chmod(tmp / "authorized_keys", 0o600)
        ssh_port = free_tcp_port()
        config = tmp / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {ssh_port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {tmp / 'host_key'}",
                    f"PidFile {tmp / 'sshd.pid'}",
                    f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "PermitRootLogin prohibit-password",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        log = open(self.log_dir / "sshd.log", "ab")  # noqa: SIM115 - sshd writes to it until it is stopped
        sshd_proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        local_port = free_tcp_port()
        user = os.environ.get("USER") or "root"
        await asyncio.sleep(0.5)
        ssh_proc = subprocess.Popen(
            [
                "ssh",
                "-N",
                "-p",
                str(ssh_port),
                "-i",
                str(tmp / "client_key"),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "LogLevel=ERROR",
                "-L",
                f"127.0.0.1:{local_port}:127.0.0.1:{sink_port}",
                f"{user}@127.0.0.1",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(100):
            await asyncio.sleep(0.1)
            if ssh_proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                return {"port": local_port, "procs": [ssh_proc, sshd_proc], "tmp": tmp, "log": log}
        self.log(f"ssh -L did not come up (see {self.log_dir / 'sshd.log'})")
        await self.stop_ssh({"procs": [ssh_proc, sshd_proc], "tmp": tmp, "log": log})
        return None

    async def stop_ssh(self, ssh: dict) -> None:
        for proc in ssh["procs"]:
            stop_process(proc)
        ssh["log"].close()
        shutil.rmtree(ssh["tmp"], ignore_errors=True)

    async def start_cli_tunnel(self, ready: dict, sink_port: int, variant: list[str]) -> int:
        home = Path(tempfile.mkdtemp(prefix="dpb-cli-"))
        self.temp_dirs.append(home)
        beacon = f"127.0.0.1:{ready['port']}={ready['fingerprint']}"
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}
        ids = {}
        for side in ("expose", "forward"):
            out = subprocess.run(
                [sys.executable, "-m", "discretpeer.cli", "id", "--identity", str(home / f"{side}.key"), "--json"],
                capture_output=True,
                text=True,
                env=env,
                cwd=str(ROOT),
                timeout=60,
                check=True,
            )
            ids[side] = json.loads(out.stdout)["peer_id"]
        common = ["--beacon", beacon, "--udp-host", "127.0.0.1", "--no-lan", "--json"]
        expose = Worker(
            f"{self.counter:02d}-cli-expose",
            [
                *variant,
                "--",
                "expose",
                "--identity",
                str(home / "expose.key"),
                "--allow",
                ids["forward"],
                "--control",
                str(home / "expose.sock"),
                *common,
                str(sink_port),
            ],
            log_dir=self.log_dir,
            deadline=600,
        )
        self.counter += 1
        forward = Worker(
            f"{self.counter:02d}-cli-forward",
            [*variant, "--", "forward", "--identity", str(home / "forward.key"), "--to", ids["expose"], *common, "0"],
            log_dir=self.log_dir,
            deadline=600,
        )
        self.counter += 1
        for w in (expose, forward):
            self.workers.append(w)
            w.env = env
            await w.start("cli")
        listening = await forward.expect("listening", 60)
        return int(listening["port"])

    async def start_bench_forwarder(self, ready: dict, sink_port: int, variant: list[str]) -> int:
        a, b, _ = await self.peer_pair(ready, variant)
        b.send(cmd="expose", target=sink_port)
        await b.expect("exposed", 10)
        a.send(cmd="forward", port=0)
        return int((await a.expect("forwarding", 10))["port"])

    # --- the other QUIC stack -----------------------------------------------------------------

    async def bench_stack(self) -> None:
        python = self.qh3_python
        if not python:
            self.log("stack: no scratch venv with qh3 given (--qh3-python or DPB_QH3_PYTHON): skipped")
            return
        size = self.s.bulk_bytes
        self.log(f"stack: qh3 ({python}) vs aioquic, defaults, bulk {size / MB:.0f} MB x {self.s.bulk_repeat}")
        plain = await self.plain_bulk(size)
        q_server, q_ready = await self.worker("qh3-server", "qh3bench", ["--role", "server"], python=python)
        q_client, _ = await self.worker(
            "qh3-client", "qh3bench", ["--role", "client", "--port", str(q_ready["port"])], python=python
        )
        q_client.send(cmd="send", size=size, repeat=self.s.bulk_repeat, timeout=240)
        q_rates = [size / (await q_client.expect("sent", 260))["seconds"] / MB for _ in range(self.s.bulk_repeat)]
        await self.stop_all()
        self.add(
            Row(
                "stack",
                "qh3 2.x plain client/server, one stream, default settings",
                median(q_rates),
                "MB/s",
                "plain aioquic, default settings",
                plain["median"],
                target="(decision: one stack)",
                samples=q_rates,
                baseline_samples=plain["rates"],
            )
        )
        # handshakes + one request/answer, and the memory of the idle connections, side by side
        count = self.s.rate_count
        pin = cpu_count() >= 2
        servers = {}
        servers["aioquic"] = await self.worker(
            "stack-aioquic", "server", ["--kind", "bare", "--uvloop"], core=0 if pin else None
        )
        servers["qh3"] = await self.worker(
            "stack-qh3",
            "qh3bench",
            ["--role", "server", "--mode", "idle", "--uvloop"],
            core=0 if pin else None,
            python=python,
        )
        clients = {}
        for name, (_, ready) in servers.items():
            clients[name], _ = await self.worker(
                f"stack-load-{name}",
                "load",
                [
                    "--target",
                    f"127.0.0.1:{ready['port']}",
                    f"--fingerprint={ready['fingerprint']}",
                    "--kind",
                    "bare",
                    "--uvloop",
                ],
                core=1 if pin else None,
            )
        rss0 = {name: rss_bytes(server.pid) for name, (server, _) in servers.items()}
        cpu0 = {name: cpu_seconds(server.pid) for name, (server, _) in servers.items()}
        for client in clients.values():
            client.send(cmd="ramp", count=count, concurrency=16)
        done = {name: (await client.expect("ramped", 600))["opened"] for name, client in clients.items()}
        await asyncio.sleep(2.0)
        facts = {}
        for name, (server, _) in servers.items():
            server.send(cmd="stats", gc=True)
            await server.expect("stats", 60)
            facts[name] = {
                "per_cpu": done[name] / max(1e-9, cpu_seconds(server.pid) - cpu0[name]),
                "per_conn_kb": (rss_bytes(server.pid) - rss0[name]) / max(1, done[name]) / 1024,
                "done": done[name],
            }
        await self.stop_all()
        self.add(
            Row(
                "stack",
                "qh3: handshake + one request/answer per server CPU-second",
                facts["qh3"]["per_cpu"],
                "/s",
                "aioquic, same load, same core, same time",
                facts["aioquic"]["per_cpu"],
                target="(decision)",
            )
        )
        self.add(
            Row(
                "stack",
                "qh3: server RSS per idle connection",
                facts["qh3"]["per_conn_kb"],
                "KB",
                "aioquic (bare, untrimmed)",
                facts["aioquic"]["per_conn_kb"],
                target="(decision)",
                note=f"{facts['qh3']['done']} / {facts['aioquic']['done']} connections",
            )
        )
        self.extra["stack"] = {"bulk": {"qh3": q_rates, "aioquic": plain["rates"]}, "handshakes": facts}
        await self.stack_at_1472(self.s.bulk_bytes // 2)


# --- output ----------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}x" if ratio < 1.2 else f"{ratio:.2f}x"


def format_row(row: Row) -> str:
    ratio = fmt_ratio(row.ratio)
    met = {True: "MET", False: "NOT MET", None: ""}[row.met]
    base = f"{row.baseline_name}: {fmt(row.baseline, row.unit)}" if row.baseline_name else "-"
    return f"{row.figure}: {fmt(row.value, row.unit)} | {base} | {ratio} | {row.target} {met}".rstrip()


def print_table(rows: list[Row]) -> None:
    print()
    print("| benchmark | figure | value | baseline (same run) | baseline value | ratio | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        ratio = fmt_ratio(r.ratio)
        figure = r.figure + (f" ({r.note})" if r.note else "")
        print(
            f"| {r.benchmark} | {figure} | {fmt(r.value, r.unit)} | {r.baseline_name or '-'} | "
            f"{fmt(r.baseline, r.unit)} | {ratio} | {r.target} | {met} |"
        )
    print()


def machine() -> dict[str, Any]:
    import aioquic

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "aioquic": aioquic.__version__,
        "cpus": cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(ImportError):
        import uvloop

        info["uvloop"] = uvloop.__version__
    return info


# every benchmark ``--only`` may name, in the order they run; the opt-in ones run only when named
BENCHMARKS = [
    "beacon",
    "rate",
    "throughput",
    "mtu",
    "relay",
    "tcp",
    "stack",
    "natlab",
    "natbulk",
    "pyc",
    "peermem",
    "attacks",
    "tcpfallback",
    "birthday",
]
OPT_IN = ("attacks", "tcpfallback")


async def amain(args: argparse.Namespace) -> int:
    settings = settings_for(args.quick)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / f"{stamp}-logs"
    log_dir.mkdir()
    bench = Bench(settings, log_dir)
    bench.qh3_python = args.qh3_python or os.environ.get("DPB_QH3_PYTHON")
    bench.libp2p_python = args.libp2p_python or os.environ.get("DPB_LIBP2P_PYTHON")
    libp2p_temp = None
    if args.libp2p and not bench.libp2p_python and "mtu" in (args.only or ["mtu"]):
        bench.log("building a scratch venv with py-libp2p (pip install libp2p) ...")
        try:
            bench.libp2p_python, libp2p_temp = scratch_libp2p(log_dir / "libp2p-install.log")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            bench.log(f"py-libp2p rows skipped: {exc}")
    names = args.only or [name for name in BENCHMARKS if name not in OPT_IN]
    if not args.from_checkout:
        bench.log("installing the package into a fresh venv (pip install .[fast]) ...")
        try:
            bench.installed = install(log_dir / "install.log")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"cannot install the package: {exc}")
            return 1
        bench.log(f"workers run {bench.installed.location} ({bench.installed.seconds:.0f}s to install)")
    info = machine()
    print(
        f"discretpeer benchmarks ({'quick' if args.quick else 'full'}): {', '.join(names)}; "
        f"aioquic {info['aioquic']}, Python {info['python']}, {info['cpus']} CPUs, "
        f"load {info['loadavg_start'][0]:.2f}; logs in {log_dir}",
        flush=True,
    )
    started = time.perf_counter()
    errors = {}
    for name in names:
        section = time.perf_counter()
        try:
            await getattr(bench, f"bench_{name}")()
        except (TimeoutError, WorkerError, OSError, RuntimeError, KeyError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            bench.log(f"{name} FAILED: {errors[name]}")
        finally:
            await bench.stop_all()
        bench.log(f"{name} took {time.perf_counter() - section:.0f}s")
    if libp2p_temp is not None:
        shutil.rmtree(libp2p_temp, ignore_errors=True)
    if bench.installed is not None:
        info["installed"] = bench.installed.location
        bench.installed.close()
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - started
    print_table(bench.rows)
    out = RESULTS / f"{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "mode": "quick" if args.quick else "full",
                "machine": info,
                "settings": asdict(settings),
                "rows": [asdict(r) for r in bench.rows],
                "details": bench.extra,
                "errors": errors,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"results: {out} ({info['seconds']:.0f}s)")
    if errors:
        print("errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return 1
    return 0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def natlab_meetings(
    runs: int, log_dir: Path, flavour_a: str = "port_restricted", path: str = "direct"
) -> dict[str, Any]:
    """``runs`` meetings through the NAT lab (blocking: the lab drives namespaces by subprocess).
    Every namespace and process is removed at the end (Lab.close)."""
    from tests.natlab.lab import Lab, LabUnavailable
    from tests.natlab.test_matrix import BEACON_IP, DELAY_MS, first, run_pair, start_beacon

    try:
        lab = Lab()
    except LabUnavailable as exc:
        raise RuntimeError(f"NAT lab unavailable: {exc}") from None
    times: list[float] = []
    rtts: list[float] = []
    paths: list[str] = []
    workdir = log_dir / f"natlab-{flavour_a}"
    workdir.mkdir(exist_ok=True)
    try:
        lab.add_public("beacon", BEACON_IP)
        lab.add_home("A", flavour_a)
        lab.add_home("B", "port_restricted")
        lab.set_delay(DELAY_MS)
        _, entry = start_beacon(lab, workdir)
        for _ in range(runs):
            events_a, events_b = run_pair(lab, workdir, "A1", "B1", entry, payload=1000)
            ca, cb = first(events_a, "connected"), first(events_b, "connected")
            paths.append(ca["path"])
            if ca["path"] != path or ca["ms"] is None or cb["ms"] is None:
                continue
            times.append(max(ca["ms"], cb["ms"]))  # verified on both sides
            rtts.extend(x["rtt_ms"] for x in (ca, cb) if x.get("rtt_ms"))
    finally:
        lab.close()
    if not times or not rtts:
        raise RuntimeError(f"no {path} connection in the NAT lab (paths: {paths})")
    return {"times": times, "rtts": rtts, "paths": paths}


def delayer_note(backend: str | None, kind: dict[str, Any]) -> str:
    """What delayed the lab's links and what it cost (nothing when the lab ran without delay)."""
    cpu = kind["delayer_cpu_seconds"]
    if cpu is None:
        return "no delay"
    return f"delay backend {backend}, its CPU {cpu:.2f} s for {kind['transfer_seconds']:.1f} s of transfers"


def natbulk_summary(kind: dict[str, Any], rates: bool = True) -> str:
    """One line per NAT-lab path: the sender's loss recovery (medians over the transfers), the
    busier side's MB per CPU-second and what the lab dropped."""
    congestion = [c for c in kind.get("congestion", []) if c]

    def middle(values: list[float], scale: float, digits: int) -> str:  # the median over the transfers
        ordered = sorted(values)
        return f"{ordered[len(ordered) // 2] * scale:.{digits}f}" if ordered else "-"

    def mid(key: str, scale: float) -> str:
        return middle([c[key]["median"] for c in congestion if c[key]["median"] is not None], scale, 1)

    def mid_round(key: str) -> str:  # the sampler's round, in ms
        return middle([c["loop_round"][key] for c in congestion if c.get("loop_round")], 1000, 0)

    total = len(kind["rates"])  # transfers
    moved = kind.get("bytes_moved", 0) / MB
    sink = kind.get("sink_transfer_cpu_seconds") or kind.get("sink_cpu_seconds", 0.0)
    busier = max(kind.get("sender_cpu_seconds", 0.0), sink)
    parts = [f"{[round(r, 2) for r in kind['rates']]} MB/s"] if rates else []
    parts += [
        f"lost {sum(c['lost_packets'] for c in congestion)} packets in "
        f"{sum(c['loss_events'] for c in congestion)} congestion events over {total} transfers",
        f"cwnd {mid('cwnd', 1 / MB)} MB, in flight {mid('in_flight', 1 / MB)} MB, "
        f"sRTT {mid('srtt', 1000)} ms, pacing {mid('pacing_rate', 1 / MB)} MB/s (medians)",
        f"the sender's loop: a 20 ms sleep took {mid_round('median')} ms (median), up to {mid_round('max')}",
        f"{moved / busier:.1f} MB per CPU-s of the busier side" if busier else "CPU unknown",
        f"beacon {kind.get('beacon_cpu_seconds', 0.0):.2f} CPU-s",
        f"lab drops {kind.get('lab_drops')}",
    ]
    setup = kind.get("setup") or {}
    if setup.get("loss_total") or setup.get("pto_total"):  # what setting the connection up cost it
        parts.append(
            f"before the first transfer: {setup.get('loss_total', 0)} packets lost, "
            f"{setup.get('pto_total', 0)} probe timeouts, cwnd {setup.get('cwnd', 0) / 1000:.1f} KB"
        )
    return ", ".join(parts)


def lab_drops(lab: Any) -> dict[str, int]:
    """Packets the NAT lab dropped so far: at the delayer's NFQUEUE (``queue_dropped``: queue
    full; ``user_dropped``: netlink buffer full), on every lab interface and qdisc, and at the
    UDP sockets of every lab node (``udp_rcvbuf``: a receive buffer full, the reader behind)."""
    drops = {"nfqueue_queue": 0, "nfqueue_user": 0, "links": 0, "qdiscs": 0, "udp_rcvbuf": 0}
    table = lab.run("core", ["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 7:
            drops["nfqueue_queue"] += int(fields[5])
            drops["nfqueue_user"] += int(fields[6])
    for name in lab.nodes:
        links = lab.run(name, ["ip", "-s", "-j", "link"], check=False).stdout
        for link in json.loads(links or "[]"):
            stats = link.get("stats64", {})
            drops["links"] += stats.get("rx", {}).get("dropped", 0) + stats.get("tx", {}).get("dropped", 0)
        qdiscs = lab.run(name, ["tc", "-s", "-j", "qdisc"], check=False).stdout
        drops["qdiscs"] += sum(q.get("drops", 0) for q in json.loads(qdiscs or "[]"))
        errors = udp_receive_buffer_errors(lab.run(name, ["cat", "/proc/net/snmp"], check=False).stdout)
        drops["udp_rcvbuf"] += errors
        drops[f"udp_rcvbuf {name}"] = errors  # which socket's reader fell behind: a home host's, the beacon's
    return drops


def drops_between(start: dict[str, int], end: dict[str, int]) -> dict[str, int]:
    """The lab's drops from ``start`` to ``end`` (two ``lab_drops``); per-node keys only where
    something was dropped."""
    delta = {k: end[k] - start.get(k, 0) for k in end}
    return {k: v for k, v in delta.items() if v or not k.startswith("udp_rcvbuf ")}


def udp_receive_buffer_errors(snmp: str) -> int:
    """``RcvbufErrors`` of the ``Udp:`` lines of a /proc/net/snmp (0 if absent or not a count)."""
    lines = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(lines) < 2 or "RcvbufErrors" not in lines[0]:
        return 0
    column = lines[0].index("RcvbufErrors")
    value = lines[1][column] if column < len(lines[1]) else ""
    return int(value) if value.isascii() and value.isdigit() else 0


def natlab_bulk(
    installed: Installed,
    log_dir: Path,
    size: int,
    repeat: int,
    dgram: int,
    window: int,
    changes: dict[str, Any] | None = None,
    delay_ms: float | None = None,
    rate_mbit: float | None = None,
    uvloop: bool = False,
    before_each: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Bulk transfers between two port-restricted NATs of the lab (blocking), direct then with
    the sender relay-only; every process runs the installed package (``python -I``).
    ``changes``: Tuning fields both peers set (an ablation); ``delay_ms``: one-way, per internet
    link (None: the lab's usual 20 ms); ``rate_mbit``: both homes' lines limited to that rate
    (tbf, 80 ms queue); ``uvloop``: the peers run on uvloop (as the CLI does); ``before_each``:
    called before each direct transfer starts (the baseline's own
    transfer, interleaved with the lab's)."""
    from discretpeer import Identity
    from tests.natlab.lab import Lab, LabUnavailable
    from tests.natlab.test_matrix import BEACON_IP, DELAY_MS

    if delay_ms is None:
        delay_ms = DELAY_MS

    try:
        lab = Lab()
    except LabUnavailable as exc:
        raise RuntimeError(f"NAT lab unavailable: {exc}") from None
    tuned = "-".join(f"{k}={v}" for k, v in (changes or {}).items())
    workdir = log_dir / f"natbulk-{window}-{delay_ms:g}ms-{rate_mbit or 0:g}mbit-{tuned}{'-uvloop' if uvloop else ''}"
    workdir.mkdir(exist_ok=True)
    script = str(installed.root / "benchmarks" / "workers" / "natbulk.py")
    out: dict[str, Any] = {"backend": None}
    try:
        lab.add_public("beacon", BEACON_IP)
        lab.add_home("A", "port_restricted")
        lab.add_home("B", "port_restricted")
        lab.set_delay(delay_ms)
        out["backend"] = lab.delay_backend()
        if rate_mbit:
            for home in ("A", "B"):
                lab.set_rate(home, rate_mbit)
        beacon_dir = workdir / "beacon"
        beacon_dir.mkdir()
        (beacon_dir / "Beacon.conf.toml").write_text(
            # what the relay can forward, not the default cap for a small VPS (25 MB/s in all)
            "relay_rate_bytes_per_second = 1000000000\nrelay_burst_bytes = 250000000\n"
            "relay_total_rate_bytes_per_second = 0\n"
        )
        beacon = lab.popen(
            "beacon",
            [
                installed.python,
                "-I",
                "-m",
                "beacon",
                "--dir",
                str(beacon_dir),
                "--host",
                BEACON_IP,
                "--port",
                "4264",
                "--no-ipv6",
            ],
            name="natbulk-beacon",
        )
        beacon.wait_for(r"^ready", timeout=30)
        fingerprint = (beacon_dir / "certificate_hash.txt").read_text().strip()
        entry = {"hostname": f"{BEACON_IP}:4264", "cert_hash": fingerprint}
        for kind in ("direct", "relay"):
            ids = {}
            for name in ("send", "sink"):
                ids[name] = Identity.generate()
                ids[name].save(workdir / f"{kind}-{name}.key")
            common = {
                "beacons": [entry],
                "meeting": f"natbulk {kind} {os.urandom(4).hex()}",
                "dgram": dgram,
                "window": window,
                "size": size,
                "repeat": repeat,
                "timeout": 30,
                "tuning": changes or {},
                "uvloop": uvloop,
            }
            gate = before_each if kind == "direct" else None
            procs = {}
            for name, host, other in (("sink", "B1", "send"), ("send", "A1", "sink")):
                config = common | {
                    "role": name,
                    "identity": str(workdir / f"{kind}-{name}.key"),
                    "expect": ids[other].peer_id,
                    "direct": not (kind == "relay" and name == "send"),
                    "gated": gate is not None and name == "send",
                }
                procs[name] = lab.popen(
                    host,
                    [installed.python, "-I", script, json.dumps(config)],
                    name=f"natbulk-{kind}-{name}",
                    stdin=subprocess.PIPE if config["gated"] else subprocess.DEVNULL,
                )
            sender = procs["send"]
            delayer = getattr(lab, "_delayer", None)  # the NFQUEUE delay program, when netem is missing
            cpu_start = cpu_seconds(delayer.pid) if delayer is not None else None
            drops_start = lab_drops(lab)
            sink_cpu_start = cpu_seconds(procs["sink"].pid)
            beacon_cpu_start = cpu_seconds(beacon.pid)
            if gate is not None:
                _gated_transfers(sender, repeat, gate)
            sender.wait(timeout=60 + repeat * 240)
            sink_cpu = cpu_seconds(procs["sink"].pid) - sink_cpu_start
            beacon_cpu = cpu_seconds(beacon.pid) - beacon_cpu_start
            drops_end = lab_drops(lab)
            cpu_delayer = cpu_seconds(delayer.pid) - cpu_start if cpu_start is not None else None
            events = sender.json_lines()
            sent = [e for e in events if e.get("event") == "sent"]
            connected = [e for e in events if e.get("event") == "connected"]
            if len(sent) != repeat or not connected:
                raise RuntimeError(f"natbulk {kind}: {events[-3:]} {sender.stderr[-500:]}")
            received = [e for e in procs["sink"].json_lines() if e.get("event") == "received"]
            procs["sink"].terminate()
            seconds = sum(e["seconds"] for e in sent)
            out[kind] = {
                "rates": [size / e["seconds"] / MB for e in sent],
                # the receiver's delivery rate over the second half of each transfer (what the path
                # sustains: no request/answer round trip in it, and little slow start)
                "sustained_rates": [
                    e["second_half_bytes"] / e["second_half_seconds"] / MB
                    for e in received
                    if e.get("second_half_seconds")
                ],
                "path": connected[0]["path"],
                "datagram_size": sent[-1]["datagram_size"],
                "rtt_ms": (connected[0]["rtt"] or 0) * 1000,
                # the sender's congestion state once connected, before the first transfer
                "setup": connected[0].get("setup"),
                # share of a core the delayer used over the sender's whole life (set-up included)
                "delayer_cpu_seconds": cpu_delayer,
                "transfer_seconds": seconds,
                # the sender's loss recovery per transfer (cwnd, in flight, losses, pacing, RTT)
                "congestion": [e.get("congestion") for e in sent],
                # CPU: the sender's during the transfers, the receiver's over the sender's life
                "sender_cpu_seconds": sum(e.get("cpu_seconds", 0.0) for e in sent),
                "sink_cpu_seconds": sink_cpu,
                # the beacon's over the sender's life (the relay's forwarding, on the relay path)
                "beacon_cpu_seconds": beacon_cpu,
                # the receiver's CPU during its streams only (sink_cpu_seconds adds its set-up)
                "sink_transfer_cpu_seconds": sum(e["cpu_seconds"] for e in received),
                "bytes_moved": size * len(sent),
                # packets the lab dropped meanwhile (delayer queue, links, qdiscs)
                "lab_drops": drops_between(drops_start, drops_end),
            }
            if connected[0]["path"] != ("relay" if kind == "relay" else "direct"):
                raise RuntimeError(f"natbulk {kind}: the connection took the {connected[0]['path']} path")
    finally:
        lab.close()
    return out


def _gated_transfers(sender: Any, repeat: int, before_each: Callable[[], None]) -> None:
    """Let a gated natbulk sender make its ``repeat`` transfers one at a time, ``before_each``
    first; then tell it there are no more (EOF)."""
    stdin = sender.popen.stdin
    for index in range(repeat):
        before_each()
        stdin.write("go\n")
        stdin.flush()
        deadline = time.monotonic() + 300
        while sum(1 for e in sender.json_lines() if e.get("event") == "sent") <= index:
            if not sender.running() or time.monotonic() > deadline:
                raise RuntimeError(f"natbulk: transfer {index} did not end: {sender.stderr[-500:]}")
            time.sleep(0.05)
    stdin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (~2 min)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
    )
    parser.add_argument(
        "--from-checkout",
        action="store_true",
        help="workers import the checkout (as before) instead of a pip-installed copy",
    )
    parser.add_argument("--libp2p", action="store_true", help="build a scratch venv with py-libp2p for the mtu rows")
    parser.add_argument(
        "--libp2p-python",
        help="python of a scratch venv with py-libp2p (never the project's): adds "
        "its QUIC and TCP rows to mtu (default: $DPB_LIBP2P_PYTHON)",
    )
    parser.add_argument(
        "--qh3-python",
        help="python of a scratch venv with qh3 (never the project's): adds the "
        "stack comparison (default: $DPB_QH3_PYTHON)",
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130
