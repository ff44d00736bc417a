"""One stream between two discretpeer peers inside NAT-lab hosts (run by ``benchmarks.run``'s
``natbulk``). Standalone on purpose: started as ``python -I natbulk.py CONFIG`` by the installed
venv's interpreter, so only the pip-installed package is importable.

CONFIG (JSON): {"role": "send"|"sink", "beacons": [...], "meeting": M, "expect": PEER_ID or null,
"identity": PATH, "direct": bool, "dgram": N, "window": N, "size": N, "repeat": K, "timeout": T,
"gated": bool (the sender starts each transfer on a line from stdin)}.
JSON lines on stdout: connected {path, datagram_size, rtt}, sent {seconds, datagram_size,
congestion, cpu_seconds (the sender's, during the transfer)}, done; the sink: received {bytes,
cpu_seconds (during that stream), second_half_bytes, second_half_seconds (see second_half)}. ``congestion`` is the
sender's aioquic loss recovery during that transfer, sampled every 20 ms: losses (packets,
congestion events, probe-timeout expiries), the median and maximum of the congestion window,
bytes in flight, pacing rate and smoothed RTT, the slow-start threshold at the end, and a
coarse trace (every 10th sample); ``loop_round``: the median and longest time a round of the
20 ms sampler took (the sender's event-loop lag).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import sys
import time


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    cpu_start = time.process_time()
    total = 0
    arrivals: list[tuple[float, int]] = []  # (time, bytes so far) after each read
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        total += len(data)
        arrivals.append((time.perf_counter(), total))
    writer.write(b"done %d" % total)
    writer.write_eof()
    emit(event="received", bytes=total, cpu_seconds=time.process_time() - cpu_start, **second_half(arrivals))


def second_half(arrivals: list[tuple[float, int]]) -> dict[str, float]:
    """The delivery rate over the second half of a stream, as the receiver saw it: from the read that
    completed half the bytes to the last one. Neither the request's round trip nor the answer's,
    nor most of slow start, is in it: what the path sustains, which a short transfer over a long
    round trip cannot show (24 MB over 82 ms at 250 MB/s: one round trip is 46% of the time)."""
    if len(arrivals) < 2:
        return {}
    total = arrivals[-1][1]
    start = next(i for i, (_, got) in enumerate(arrivals) if got >= total / 2)
    if start == len(arrivals) - 1:
        start -= 1
    (t0, got0), (t1, _) = arrivals[start], arrivals[-1]
    return {"second_half_bytes": total - got0, "second_half_seconds": t1 - t0}


LOSS_COUNTS: dict[int, object] = {}  # one counter per connection (count_losses wraps once)


def summarise(samples: list[dict], losses, before: tuple[int, int, int]) -> dict:
    """Median / max of each sampled figure, the losses counted, and every 10th sample."""

    def stats(key: str) -> dict:
        values = sorted(s[key] for s in samples if s.get(key) is not None)
        if not values:
            return {"median": None, "max": None}
        return {"median": values[len(values) // 2], "max": values[-1]}

    # the sampler sleeps 20 ms: how long each round took says how long the sender's event loop
    # was busy elsewhere (a writer that never waited, a long transmit)
    rounds = sorted(b["t"] - a["t"] for a, b in itertools.pairwise(samples))
    return {
        "loop_round": {"median": rounds[len(rounds) // 2], "max": rounds[-1]} if rounds else None,
        "lost_packets": losses.packets - before[0],
        "loss_events": losses.events - before[1],
        "expired_packets": losses.expired - before[2],
        "cwnd": stats("cwnd"),
        "in_flight": stats("in_flight"),
        "pacing_rate": stats("pacing_rate"),
        "srtt": stats("srtt"),
        "latest_rtt": stats("latest_rtt"),
        "ssthresh_end": samples[-1].get("ssthresh") if samples else None,
        "samples": len(samples),
        "trace": samples[::10],
    }


class TotalLosses:
    """qh3's core counts lost packets only (no congestion events, no expiries)."""

    events = 0
    expired = 0

    def __init__(self, quic) -> None:
        self.quic = quic

    @property
    def packets(self) -> int:
        return int(self.quic.congestion_state().get("loss_total", 0))


async def sample_congestion(quic, samples: list[dict], started: float) -> None:
    from discretpeer.quic_stack import congestion_state

    while True:
        samples.append(congestion_state(quic) | {"t": round(time.perf_counter() - started, 3)})
        await asyncio.sleep(0.02)


async def send(conn, size: int, congestion: dict | None = None) -> float:
    quic = conn._protocol.quic  # the benchmark's window into the sender's loss recovery
    from discretpeer._aioquic import count_losses
    from discretpeer.quic_stack import NativeQuicConnection

    if id(quic) not in LOSS_COUNTS:
        LOSS_COUNTS[id(quic)] = TotalLosses(quic) if isinstance(quic, NativeQuicConnection) else count_losses(quic)
    losses = LOSS_COUNTS[id(quic)]
    before = (losses.packets, losses.events, losses.expired)
    samples: list[dict] = []
    sampler = asyncio.ensure_future(sample_congestion(quic, samples, time.perf_counter()))
    try:
        return await send_stream(conn, size)
    finally:
        sampler.cancel()
        if congestion is not None:
            congestion.update(summarise(samples, losses, before))


async def send_stream(conn, size: int) -> float:
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
    if config.get("tuning"):
        tuning = dataclasses.replace(tuning, **config["tuning"])
    async with Peer(identity, config["beacons"], direct=config.get("direct", True), tuning=tuning, **options) as peer:
        conn = await peer.connect(config["meeting"], expect=config["expect"], timeout=config.get("timeout", 30))
        await asyncio.sleep(1.5)  # path-MTU search over (a few RTTs)
        from discretpeer.quic_stack import congestion_state

        # the sender's loss recovery before any transfer: what setting the connection up cost
        # (packets lost, probe timeouts) and the window it starts the first transfer with
        setup = congestion_state(conn._protocol.quic)
        emit(event="connected", path=conn.path, datagram_size=conn.datagram_size, rtt=conn.rtt, setup=setup)
        if config["role"] == "sink":
            while True:
                reader, writer = await conn.accept_stream()
                asyncio.ensure_future(sink(reader, writer))
        for _ in range(config.get("repeat", 1)):
            if config.get("gated"):  # each transfer when told (a line on stdin), EOF: none more
                line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
            congestion: dict = {}
            cpu_start = time.process_time()
            seconds = await asyncio.wait_for(send(conn, config["size"], congestion), 240)
            cpu = time.process_time() - cpu_start
            emit(
                event="sent",
                seconds=seconds,
                bytes=config["size"],
                datagram_size=conn.datagram_size,
                path=conn.path,
                congestion=congestion,
                cpu_seconds=cpu,
            )
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
