"""SendingTransport: sends on a socket someone else reads; queues (bounded) what the kernel refuses.

Real sockets on both loops: UDP on loopback, and Unix datagram sockets whose receiver does not
read (the kernel then refuses sends, which a UDP socket on loopback almost never does).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import uvloop

from discretpeer.udp_transport import SendingTransport


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.lost: list[Exception | None] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    def run(coro):
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    return run


def test_sends_to_loopback_and_closes_once(run):
    async def main():
        loop = asyncio.get_running_loop()
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        protocol = Recorder()
        transport = SendingTransport(loop, sock, protocol)
        assert transport.get_extra_info("sockname") == sock.getsockname()
        assert transport.get_extra_info("socket") is sock
        for n in range(3):
            transport.sendto(b"datagram %d" % n, receiver.getsockname())
        assert [receiver.recvfrom(100)[0] for _ in range(3)] == [b"datagram 0", b"datagram 1", b"datagram 2"]
        transport.close()
        transport.close()
        assert transport.is_closing()
        transport.sendto(b"after close", receiver.getsockname())  # ignored
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert protocol.lost == [None] and sock.fileno() == -1
        receiver.settimeout(0.1)
        with pytest.raises(TimeoutError):
            receiver.recvfrom(100)
        receiver.close()

    run(main())


def test_what_the_kernel_refuses_waits_in_order_and_the_wait_is_bounded(run, tmp_path: Path):
    async def main():
        loop = asyncio.get_running_loop()
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(tmp_path / "receiver"))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp_path / "sender"))
        sock.setblocking(False)
        protocol = Recorder()
        transport = SendingTransport(loop, sock, protocol, max_queued_bytes=64 * 1000)
        target = str(tmp_path / "receiver")
        count = 2000  # far more than the receiver's queue holds while nobody reads
        for n in range(count):
            transport.sendto(n.to_bytes(4, "big") + b"x" * 996, target)
        queued = transport.get_write_buffer_size()
        assert 0 < queued <= 64 * 1000  # the kernel refused some; the wait is bounded
        assert transport.dropped > 0
        # the receiver reads: what waited follows, in order, after what the kernel took at once
        receiver.setblocking(False)
        got: list[int] = []
        deadline = loop.time() + 5
        while loop.time() < deadline and (transport.get_write_buffer_size() or len(got) < count - transport.dropped):
            try:
                got.append(int.from_bytes(receiver.recv(2000)[:4], "big"))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert transport.get_write_buffer_size() == 0
        assert len(got) == count - transport.dropped
        assert got == sorted(got)  # in order, only the overflow left out
        transport.close()
        receiver.close()

    run(main())


def test_a_refused_address_is_reported_not_raised(run, tmp_path: Path):
    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        protocol = Recorder()
        transport = SendingTransport(loop, sock, protocol)
        transport.sendto(b"nobody", str(tmp_path / "absent"))
        assert len(protocol.errors) == 1 and isinstance(protocol.errors[0], OSError)
        transport.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(main())
