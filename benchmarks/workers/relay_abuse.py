"""Relay reflection and token squatting against an in-process beacon on loopback (issue 12).

    .venv/bin/python -m benchmarks.workers.relay_abuse [--datagrams 2000] [--meetings 20]

Prints, one line each:

* **reflection**: client A sends one packet of its own connection (its RelayRequest) from another
  address (127.0.0.2, the "victim"); B then sends ``--datagrams`` relay frames of 1,300 bytes on
  the session. Bytes that reach the victim's socket, relay frames and QUIC together, against the
  bytes the victim "sent" (the spoofed packet): RFC 9000 allows 3x to an unvalidated address.
* **meeting latency**: a pair (127.0.0.2 and 127.0.0.3) announces a meeting's token; time from
  the second announce until both hold the other's introduction, p50/p90/max over ``--meetings``
  meetings, quiet and while squatters hold every meeting's token: one address with 64 connections
  x 128 tokens (the issue's figure), and 8 addresses x 2 connections filling all 16 places.
  A meeting that does not happen within 2 s counts as "never".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import time
from typing import Any

from aioquic.quic.configuration import QuicConfiguration

from beacon import BeaconServer, loopback_config
from benchmarks.common import ROOT, load_module
from discretpeer.endpoint import Endpoint
from discretpeer.proto import wire
from discretpeer.proto.relay_frame import RELAY_DATA, build_relay_frame

MEET_TIMEOUT = 2.0


# the test suite's beacon-client protocol: control-stream messages land in its ``inbox``
_Protocol = load_module("beacon_test_client", ROOT / "tests" / "beacon" / "client.py").ClientProtocol


class Client:
    """One beacon connection (Hello done) from its own socket on ``host``."""

    def __init__(self, endpoint: Endpoint, protocol: Any, instance: bytes) -> None:  # a _Protocol
        self.endpoint, self.protocol, self.instance = endpoint, protocol, instance
        self.relayed = 0
        endpoint.on_datagram = self._on_datagram

    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        self.relayed += 1

    @classmethod
    async def connect(cls, server: BeaconServer, host: str = "127.0.0.1") -> Client:
        endpoint = await Endpoint.open(host, 0)
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=[wire.BEACON_ALPN], verify_mode=ssl.CERT_NONE, idle_timeout=300.0
        )
        protocol = endpoint.connect(server.addresses[0], configuration, _Protocol)
        await asyncio.wait_for(protocol.wait_connected(), 5)
        client = cls(endpoint, protocol, os.urandom(wire.INSTANCE_SIZE))
        client.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=client.instance))
        await client.expect(wire.Welcome)
        return client

    def send(self, message: wire.Message) -> None:
        self.protocol._quic.send_stream_data(0, wire.encode(message))
        self.protocol.transmit()

    async def expect(self, kind: type, timeout: float = 3.0) -> wire.Message:
        while True:
            message = await asyncio.wait_for(self.protocol.inbox.get(), timeout)
            if isinstance(message, kind):
                return message

    def close(self) -> None:
        self.protocol.close()
        self.endpoint.close()


class _Victim(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.bytes = 0
        self.relay_bytes = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.bytes += len(data)
        if data[:1] == bytes([RELAY_DATA]):
            self.relay_bytes += len(data)


async def reflection(datagrams: int) -> str:
    async with BeaconServer(loopback_config()) as server:
        loop = asyncio.get_running_loop()
        beacon = server.addresses[0]
        token = os.urandom(32)
        a, b = await Client.connect(server), await Client.connect(server)
        a.send(wire.Announce(add=(token,)))
        b.send(wire.Announce(add=(token,)))
        await a.expect(wire.Introduction)
        await b.expect(wire.Introduction)
        transport, victim = await loop.create_datagram_endpoint(_Victim, local_addr=("127.0.0.2", 0))
        quic = a.protocol._quic
        quic.send_stream_data(0, wire.encode(wire.RelayRequest(token=token, instance=b.instance)))
        spoofed = 0
        for data, addr in quic.datagrams_to_send(now=loop.time()):
            spoofed += len(data)
            transport.sendto(data, addr)
        await asyncio.sleep(0.05)
        b.send(wire.RelayRequest(token=token, instance=a.instance))
        grant = await b.expect(wire.RelayGrant)
        frame = build_relay_frame(grant.session_id, os.urandom(1300 - 9))
        started = time.perf_counter()
        for index in range(datagrams):
            b.endpoint.sendto(frame, beacon)
            if index % 20 == 19:
                await asyncio.sleep(0.02)  # ~1 MB/s, the default per-peer relay rate
        await asyncio.sleep(0.3)
        elapsed = time.perf_counter() - started
        transport.close()
        a.close()
        b.close()
        return (
            f"reflection: 1 spoofed packet ({spoofed} B) then {datagrams} relay frames of {len(frame)} B "
            f"in {elapsed:.1f} s -> {victim.bytes} B to the spoofed address ({victim.relay_bytes} B of relay "
            f"frames; {victim.bytes / max(1, spoofed):.2f}x what it sent), {a.relayed} frames to the real peer"
        )


async def meeting_latency(meetings: int, squat: str) -> str:
    config = loopback_config(
        handshakes_per_second_per_ip=1000.0,
        handshake_burst_per_ip=1000,
        max_connections_per_ip=128,
        idle_timeout_seconds=300.0,  # squatters stay while the never-met meetings time out
    )
    async with BeaconServer(config) as server:
        tokens = [os.urandom(32) for _ in range(meetings)]
        squatters: list[Client] = []
        if squat == "one address":
            for _ in range(64):
                client = await Client.connect(server, "127.0.0.1")
                held = tokens + [os.urandom(32) for _ in range(128 - len(tokens))]
                for start in range(0, len(held), wire.MAX_TOKENS_PER_FRAME):
                    client.send(wire.Announce(add=tuple(held[start : start + wire.MAX_TOKENS_PER_FRAME])))
                squatters.append(client)
        elif squat == "8 addresses":
            for n in range(8):
                for _ in range(2):
                    client = await Client.connect(server, f"127.0.0.{10 + n}")
                    client.send(wire.Announce(add=tuple(tokens)))
                    squatters.append(client)
        await asyncio.sleep(0.5)
        times: list[float] = []
        never = 0
        for token in tokens:
            a = await Client.connect(server, "127.0.0.2")
            b = await Client.connect(server, "127.0.0.3")
            a.send(wire.Announce(add=(token,)))
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            b.send(wire.Announce(add=(token,)))

            async def introduced(me: Client, other: Client) -> None:
                while True:
                    message = await me.expect(wire.Introduction, timeout=MEET_TIMEOUT)
                    if message.instance == other.instance:  # type: ignore[attr-defined]  # patched for this benchmark
                        return

            try:
                await asyncio.gather(introduced(a, b), introduced(b, a))
                times.append(time.perf_counter() - started)
            except TimeoutError:
                never += 1
            a.close()
            b.close()
        for client in squatters:
            client.close()
        label = {
            "": "quiet",
            "one address": "squatting, 1 address x 64 conns x 128 tokens",
            "8 addresses": "squatting, 8 addresses x 2 conns (all 16 places)",
        }[squat]
        if not times:
            return f"meeting latency ({label}): {meetings} meetings, never met: {never}"
        times.sort()
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        return (
            f"meeting latency ({label}): p50 {1000 * statistics.median(times):.2f} ms, p90 {1000 * p90:.2f} ms, "
            f"max {1000 * times[-1]:.2f} ms over {len(times)} meetings; never met: {never}"
        )


async def main(args: argparse.Namespace) -> None:
    print(await reflection(args.datagrams), flush=True)
    for squat in ("", "one address", "8 addresses"):
        print(await meeting_latency(args.meetings, squat), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=2000)
    parser.add_argument("--meetings", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
