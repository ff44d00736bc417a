"""The endpoint's own socket reader on asyncio's loop (discretpeer.endpoint.Endpoint._read_ready):
several datagrams per wakeup, and an ICMP error on the socket does not stop it. Real UDP sockets
on loopback."""

from __future__ import annotations

import asyncio
import socket
import time

import discretpeer.endpoint as endpoint_module
from discretpeer.endpoint import Endpoint


async def _received_after_iterations(batch: int, monkeypatch, count: int = 10, iterations: int = 3) -> int:
    monkeypatch.setattr(endpoint_module, "READ_BATCH", batch)
    got: list[bytes] = []
    endpoint = await Endpoint.open("127.0.0.1", 0, on_datagram=lambda data, addr: got.append(data))
    try:
        assert endpoint.batched_reads == (batch > 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for index in range(count):
                sender.sendto(b"\x00probe %d" % index, endpoint.local_address)  # no fixed bit: not QUIC
            time.sleep(0.05)  # the loop blocked: all queued in the socket, seen at once on its next select
            for _ in range(iterations):
                await asyncio.sleep(0)
            received = len(got)
            for _ in range(100):  # and the rest arrive anyway, in order
                if len(got) == count:
                    break
                await asyncio.sleep(0.01)
            assert got == [b"\x00probe %d" % index for index in range(count)]
            return received
    finally:
        endpoint.close()


async def test_asyncio_loop_reads_every_waiting_datagram_in_one_wakeup(monkeypatch):
    assert await _received_after_iterations(64, monkeypatch) == 10


async def test_without_batching_asyncio_reads_one_datagram_per_wakeup(monkeypatch):
    # the comparison that shows what the batch changes (and that the test above can fail)
    assert await _received_after_iterations(1, monkeypatch) <= 3


async def test_an_icmp_error_does_not_stop_the_reader():
    got: list[bytes] = []
    endpoint = await Endpoint.open("127.0.0.1", 0, on_datagram=lambda data, addr: got.append(data))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind(("127.0.0.1", 0))
            dead = closed.getsockname()
        for _ in range(3):
            endpoint.sendto(b"\x00to nobody", dead)  # the kernel answers port unreachable
        await asyncio.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"\x00still here", endpoint.local_address)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
        assert got == [b"\x00still here"]
    finally:
        endpoint.close()
    assert endpoint.closed
