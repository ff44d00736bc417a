"""A QUIC server in its own process: the beacon, or a bare aioquic server (the baseline).

Prints ``{"event": "ready", "port": ..., "fingerprint": ...}``; answers ``{"cmd": "stats"}`` with
its connection counts; ``{"cmd": "stop"}`` (or stdin closing) ends it.

``--kind bare``: aioquic's own ``serve()`` with a protocol that answers the first bytes on
stream 0 with as many bytes as a beacon Welcome (so both servers carry the same traffic) and
does nothing else.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from benchmarks.common import commands_until_stop, emit, rss_bytes, run_loop, stdin_commands, worker_args
from certs import create_bundle
from discretpeer.proto import wire

WELCOME_SIZE = len(wire.encode(wire.Welcome(version=1, observed=wire.Address("127.0.0.1", 40000), max_tokens=128)))


def bench_beacon_settings(**extra):
    """A beacon configured for one host making all the load: per-IP limits lifted, no Retry."""
    from beacon import loopback_config

    return loopback_config(
        max_connections=200000,
        max_connections_per_ip=200000,
        handshakes_per_second_per_ip=1e6,
        handshake_burst_per_ip=100000,
        retry="never",
        idle_timeout_seconds=600.0,
        hello_timeout_seconds=120.0,
        frames_per_second_per_connection=1000.0,
        frame_burst_per_connection=1000,
        **extra,
    )


class BareProtocol(QuicConnectionProtocol):
    count = 0
    handshakes = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._answered = False
        BareProtocol.count += 1

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if not self._answered:
                self._answered = True
                self._quic.send_stream_data(event.stream_id, b"w" * WELCOME_SIZE)
            return
        if isinstance(event, events.HandshakeCompleted):
            BareProtocol.handshakes += 1
        elif isinstance(event, events.ConnectionTerminated):
            BareProtocol.count -= 1
        super().quic_event_received(event)


async def main(args: argparse.Namespace) -> None:
    bundle = create_bundle()
    commands = await stdin_commands()
    if args.kind == "beacon":
        import beacon.server as beacon_server
        from beacon import BeaconServer

        if args.no_trim:
            beacon_server.TRIM_AFTER_HANDSHAKE = False
        relay = {}
        if args.relay_rate:
            relay = {
                "relay_rate_bytes_per_second": args.relay_rate,
                "relay_burst_bytes": max(262144, args.relay_rate // 4),
                # what the relay can forward, not the default cap for a small VPS (25 MB/s in all)
                "relay_total_rate_bytes_per_second": 0,
            }
        if args.defaults:  # the shipped limits (per-IP, Retry "auto"): the attacks benchmark
            from beacon import loopback_config

            settings = loopback_config(port=args.port)
        else:
            settings = bench_beacon_settings(port=args.port, **relay)
        server = BeaconServer(settings, bundle, manage_gc=not args.no_gc_freeze)
        await server.start()
        port = server.port

        def stats():
            return {
                "connections": server.connection_count,
                "registered": len(server.meetings._members),
                "tokens": server.meetings.tokens_held,
                "relay_bytes": server.relay.forwarded_bytes,
                "relay_dropped": dict(server.relay.dropped),
                "junk_initials": sum(getattr(e, "junk_initials", 0) for e in server._endpoints),
            }

        stop = server.stop
    else:
        config = QuicConfiguration(
            is_client=False,
            alpn_protocols=[wire.BEACON_ALPN],
            idle_timeout=600.0,
            max_data=256 * 1024,
            max_stream_data=64 * 1024,
            certificate=bundle.certificate,
            private_key=bundle.private_key,
        )
        quic_server = await serve("127.0.0.1", args.port, configuration=config, create_protocol=BareProtocol)
        port = quic_server._transport.get_extra_info("sockname")[1]

        def stats():
            return {"connections": BareProtocol.count, "handshakes": BareProtocol.handshakes}

        async def stop():
            quic_server.close()

    gc.collect()
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_started = [0.0]

    def gc_timer(phase: str, info: dict) -> None:  # how long the collector stops the loop
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(gc_timer)

    def gc_stats() -> dict:
        return {
            f"gc{generation}": {
                "count": len(values),
                "max_ms": 1000 * max(values, default=0.0),
                "total_ms": 1000 * sum(values),
            }
            for generation, values in pauses.items()
        }

    emit("ready", port=port, fingerprint=bundle.fingerprint, pid=os.getpid(), rss=rss_bytes(os.getpid()))
    profiler = None
    try:
        async for command in commands_until_stop(commands):
            if command["cmd"] == "stats":
                if command.get("gc"):
                    gc.collect()
                if command.get("malloc_trim"):
                    import ctypes

                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                emit("stats", rss=rss_bytes(os.getpid()), gc=gc_stats(), frozen=gc.get_freeze_count(), **stats())
            elif command["cmd"] == "gctime":  # cost of a full collection now
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    gc.collect()
                    timings.append(1000 * (time.perf_counter() - started))
                emit("gctime", objects=len(gc.get_objects()), full_ms=timings)
            elif command["cmd"] == "trace":  # memory by allocation site, for the performance work
                import tracemalloc

                if command["action"] == "start":
                    tracemalloc.start(command.get("frames", 1))
                else:
                    gc.collect()
                    snapshot = tracemalloc.take_snapshot()
                    tracemalloc.stop()
                    count = max(1, command.get("per", 1))
                    for stat in snapshot.statistics(command.get("key", "lineno"))[: command.get("top", 40)]:
                        print(
                            f"{stat.size / count:9.0f} B/conn {stat.count / count:6.1f} blocks  {stat.traceback}",
                            file=sys.stderr,
                        )
                    total = sum(stat.size for stat in snapshot.statistics("filename"))
                    print(f"traced total {total / count:.0f} B/conn", file=sys.stderr, flush=True)
                emit("traced")
            elif command["cmd"] == "profile":
                import cProfile
                import pstats

                if command["action"] == "start":
                    profiler = cProfile.Profile()
                    profiler.enable()
                elif profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(command["path"])
                    pstats.Stats(command["path"], stream=sys.stderr).sort_stats("tottime").print_stats(40)
                    profiler = None
                emit("profiled")
    finally:
        await stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["beacon", "bare"], default="beacon")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-trim", action="store_true", help="beacon: keep aioquic's per-connection buffers")
    parser.add_argument("--no-gc-freeze", action="store_true", help="beacon: manage_gc=False")
    parser.add_argument("--defaults", action="store_true", help="beacon: default limits, not the load settings")
    parser.add_argument("--relay-rate", type=int, default=0, help="beacon: relay bytes/s per peer (0 = default)")
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
