"""Load client: ONE Endpoint (one UDP socket) holding many client connections to a server.

Against the beacon, a registration is what a peer does: QUIC handshake (pinned certificate
checked), then Hello + Announce(one token, one local candidate) written together on stream 0,
done when the Welcome arrives (the beacon handles the Announce in the same call). Against the
bare server the same bytes go on stream 0 and the answer has a Welcome's size; with
``--handshake-only`` a registration is the QUIC handshake alone.

Commands (JSON lines on stdin):
  {"cmd": "ramp", "count": N, "concurrency": C}    open N more connections, C in flight
  {"cmd": "churn", "rate": R, "duration": D}        every 1/R s close the oldest, open a new one
  {"cmd": "close_all"} / {"cmd": "stop"}
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import ssl
import time

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

from benchmarks.common import commands_until_stop, emit, percentile, run_loop, stdin_commands, worker_args
from certs import certificate_fingerprint
from discretpeer.endpoint import Endpoint, EndpointProtocol
from discretpeer.proto import wire


def _one_key_share() -> None:
    """Load clients offer one TLS key share (P-256, the group the server would pick anyway) instead
    of aioquic's four (P-256, P-384, X25519, X448: ~0.6 ms of key generation per handshake on
    the client). The server does exactly the same work; the client processes get cheaper, so
    that fewer cores generate the same load."""
    from aioquic import tls

    if getattr(tls.Context, "_bench_one_share", False):
        return
    original = tls.Context.__init__

    def init(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]  # a local helper
        original(self, *args, **kwargs)
        if self._is_client:
            self._supported_groups = [tls.Group.SECP256R1]

    tls.Context.__init__ = init  # type: ignore[method-assign]  # patched for this test or benchmark
    tls.Context._bench_one_share = True  # type: ignore[attr-defined]  # patched for this benchmark


_one_key_share()

WELCOME_SIZE = len(wire.encode(wire.Welcome(version=1, observed=wire.Address("127.0.0.1", 40000), max_tokens=128)))
TIMEOUT = 30.0
MAX_CHURN_IN_FLIGHT = 24  # registrations of the churn still in progress, per process


class Client(EndpointProtocol):
    def __init__(self, quic, pool: Pool) -> None:
        super().__init__(quic)
        self.pool = pool
        self.decoder = wire.FrameDecoder()
        self.ready: asyncio.Future[None] = pool.loop.create_future()
        # our own handshake future: aioquic's wait_connected() misses a handshake that completes
        # before the waiting task first runs (it does under uvloop when the loop is busy)
        self.connected: asyncio.Future[None] = pool.loop.create_future()
        self.got = 0
        self.waiters: dict[type, asyncio.Future] = {}
        self.inbox: collections.deque = collections.deque()
        self.on_message = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if self.pool.kind == "beacon":
                for message in self.decoder.feed(event.data):
                    if isinstance(message, wire.Welcome) and not self.ready.done():
                        self.ready.set_result(None)
                    elif isinstance(message, wire.Error) and message.fatal and not self.ready.done():
                        self.ready.set_exception(ConnectionError(f"beacon error {message.code}: {message.message}"))
                    elif self.on_message is not None:
                        self.on_message(self, message)
            else:
                self.got += len(event.data)
                if self.got >= WELCOME_SIZE and not self.ready.done():
                    self.ready.set_result(None)
            return
        super().quic_event_received(event)
        if isinstance(event, events.HandshakeCompleted):
            if not self.connected.done():
                self.connected.set_result(None)
            if self.pool.handshake_only and not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, events.ConnectionTerminated):
            self.pool.lost(self)
            error = ConnectionError(f"closed: {event.reason_phrase or event.error_code}")
            for future in (self.connected, self.ready):
                if not future.done():
                    future.set_exception(error)
                    future.exception()

    def send(self, message: wire.Message) -> None:
        self._quic.send_stream_data(0, wire.encode(message))
        self.transmit()


class Pool:
    def __init__(self, endpoint: Endpoint, target: tuple[str, int], fingerprint: str, kind: str, handshake_only: bool):
        self.loop = asyncio.get_running_loop()
        self.endpoint = endpoint
        self.target = target
        self.fingerprint = fingerprint
        self.kind = kind
        self.handshake_only = handshake_only
        self.config = QuicConfiguration(
            is_client=True, alpn_protocols=[wire.BEACON_ALPN], verify_mode=ssl.CERT_NONE, idle_timeout=600.0
        )
        self.live: collections.OrderedDict[Client, None] = collections.OrderedDict()
        self.failed = 0
        self.lost_count = 0
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.candidate = wire.Address("127.0.0.1", endpoint.port)

    def lost(self, client: Client) -> None:
        if self.live.pop(client, 0) is None:
            self.lost_count += 1

    async def register(self, on_message=None) -> Client | None:
        started = time.perf_counter()
        client: Client = self.endpoint.connect(self.target, self.config, lambda q: Client(q, self))  # type: ignore[assignment]  # Endpoint.connect returns an instance of the class it is given
        client.on_message = on_message
        try:
            await asyncio.wait_for(asyncio.shield(client.connected), TIMEOUT)
            certificate = client._quic.tls._peer_certificate
            if certificate_fingerprint(certificate.public_bytes(Encoding.DER)) != self.fingerprint:
                raise ConnectionError("pin mismatch")
            if not self.handshake_only:
                hello = wire.encode(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE)))
                announce = wire.encode(wire.Announce(add=(os.urandom(wire.TOKEN_SIZE),), candidates=(self.candidate,)))
                data = hello + announce if self.kind == "beacon" else b"h" * (len(hello) + len(announce))
                client._quic.send_stream_data(0, data)
                client.transmit()
            await asyncio.wait_for(asyncio.shield(client.ready), TIMEOUT)
        except (TimeoutError, ConnectionError, OSError) as exc:
            self.failed += 1
            self.errors[type(exc).__name__ + (f": {exc}" if str(exc) else "")[:80]] += 1
            client.close()
            return None
        self.latencies.append(time.perf_counter() - started)
        self.live[client] = None
        return client

    async def ramp(self, count: int, concurrency: int) -> dict:
        before = len(self.live)
        failed_before = self.failed
        self.latencies = []
        started = time.perf_counter()
        queue = iter(range(count))
        last_report = started

        async def runner() -> None:
            nonlocal last_report
            for _ in queue:
                await self.register()
                now = time.perf_counter()
                if now - last_report > 1.0:
                    last_report = now
                    emit("progress", live=len(self.live), failed=self.failed)

        await asyncio.gather(*(runner() for _ in range(min(concurrency, count))))
        return {
            "opened": len(self.live) - before,
            "failed": self.failed - failed_before,
            "seconds": time.perf_counter() - started,
            "live": len(self.live),
            "lat_p50_ms": 1000 * percentile(self.latencies, 50),
            "lat_p99_ms": 1000 * percentile(self.latencies, 99),
            "errors": dict(self.errors.most_common(5)),
        }

    async def churn(self, rate: float, duration: float) -> dict:
        started = time.perf_counter()
        self.latencies = []
        failed_before = self.failed
        closed = 0
        skipped = 0
        tasks: set[asyncio.Task] = set()
        tick = 0
        while True:
            due = started + tick / rate
            now = time.perf_counter()
            if now - started >= duration:
                break
            if due > now:
                await asyncio.sleep(due - now)
            tick += 1
            if len(tasks) >= MAX_CHURN_IN_FLIGHT:
                # the server (or this process) is behind: opening more handshakes now would
                # only pile up retransmissions; this tick is skipped and counted
                skipped += 1
                continue
            if self.live:
                oldest = next(iter(self.live))
                del self.live[oldest]
                oldest.close()
                closed += 1
            task = self.loop.create_task(self.register())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT + 5)
        return {
            "opened": len(self.latencies),
            "closed": closed,
            "skipped": skipped,
            "failed": self.failed - failed_before,
            "seconds": time.perf_counter() - started,
            "live": len(self.live),
            "lat_p50_ms": 1000 * percentile(self.latencies, 50),
            "lat_p99_ms": 1000 * percentile(self.latencies, 99),
        }

    def close_all(self) -> None:
        for client in list(self.live):
            client.close()
        self.live.clear()


async def main(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    host, port = args.target.rsplit(":", 1)
    endpoint = await Endpoint.open("127.0.0.1", 0)
    pool = Pool(endpoint, (host, int(port)), args.fingerprint, args.kind, args.handshake_only)
    emit("ready", pid=os.getpid())
    running: asyncio.Task | None = None
    try:
        async for command in commands_until_stop(commands):
            cmd = command["cmd"]
            if cmd == "ramp":
                result = await pool.ramp(command["count"], command.get("concurrency", 32))
                emit("ramped", **result)
            elif cmd == "churn":
                # runs in the background so that stop/stats still answer
                async def churn(rate=command["rate"], duration=command["duration"]) -> None:
                    emit("churned", **(await pool.churn(rate, duration)))

                running = asyncio.get_running_loop().create_task(churn())
            elif cmd == "close_all":
                pool.close_all()
                await asyncio.sleep(0.5)
                emit("closed", live=len(pool.live))
            elif cmd == "stats":
                emit("stats", live=len(pool.live), failed=pool.failed, lost=pool.lost_count)
    finally:
        if running is not None:
            running.cancel()
        pool.close_all()
        await asyncio.sleep(0.2)
        endpoint.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="host:port of the server")
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--kind", choices=["beacon", "bare"], default="beacon")
    parser.add_argument("--handshake-only", action="store_true")
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
