"""The I/O of birthday probing (plan in :mod:`discretpeer.birthday`).

:class:`ExtraSockets` (symmetric side): ``count`` UDP sockets each send an authenticated probe to
the other side's public address, re-sent every second; the first socket that receives a probe
from that address which verifies wins: it stays open, the endpoint sends everything for that
address through it and hears everything it receives; the others are closed at once. Without a
hit all are closed after the attempt.

:func:`spray` (the other side): authenticated probes from the peer's own socket to random ports
of the symmetric side's public IP, paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
from collections.abc import Callable

from discretpeer import birthday
from discretpeer.addresses import Addr
from discretpeer.tasks import wait_for

log = logging.getLogger("discretpeer.birthday")


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, owner: ExtraSockets, index: int) -> None:
        self.owner = owner
        self.index = index
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.owner.received(self, data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError):
                self.transport.sendto(data, self.owner.target)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ExtraSockets:
    """The symmetric side's sockets for one attempt towards ``target``."""

    def __init__(
        self,
        target: Addr,
        *,
        build_probe: Callable[[], bytes],
        verify: Callable[[bytes], bool],
        deliver: Callable[[bytes, Addr], None],
        count: int = birthday.SOCKETS,
    ) -> None:
        self.target = target
        self.count = count
        self._build_probe = build_probe
        self._verify = verify
        self._deliver = deliver
        self._sockets: list[_Socket] = []
        self.winner: _Socket | None = None
        self._hit = asyncio.Event()
        self.packets_sent = 0
        self.closed = False

    async def run(self, seconds: float = birthday.ATTEMPT_SECONDS, stop: Callable[[], bool] = lambda: False) -> bool:
        """Open the sockets, probe, wait for a hit (bounded; ``stop()`` ends it early, e.g. once
        another path confirmed). True on a hit (the winner stays)."""
        loop = asyncio.get_running_loop()
        try:
            for index in range(self.count):
                if self._hit.is_set():
                    break
                with contextlib.suppress(OSError):
                    _, proto = await loop.create_datagram_endpoint(
                        functools.partial(_Socket, self, index), local_addr=("0.0.0.0", 0), family=socket.AF_INET
                    )
                    self._sockets.append(proto)
                    proto.send(self._build_probe())  # its NAT mapping opens now
                    self.packets_sent += 1
            deadline = loop.time() + seconds
            first_round = True
            while not self._hit.is_set() and loop.time() < deadline and not stop():
                if first_round:  # each socket has just sent once
                    first_round = False
                    with contextlib.suppress(asyncio.TimeoutError):
                        await wait_for(self._hit.wait(), birthday.RESEND_EVERY)
                    continue
                for sock in self._sockets:
                    if self._hit.is_set():
                        break
                    sock.send(self._build_probe())
                    self.packets_sent += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    wait = min(birthday.RESEND_EVERY, max(0.0, deadline - loop.time()))
                    await wait_for(self._hit.wait(), wait)
            return self.winner is not None
        finally:
            for sock in self._sockets:
                if sock is not self.winner:
                    sock.close()
            self._sockets = [self.winner] if self.winner is not None else []
            if self.winner is None:
                self.closed = True

    def received(self, sock: _Socket, data: bytes, source: Addr) -> None:
        if self.closed or source != self.target:
            return
        if self.winner is None:
            if not self._verify(data):
                return
            self.winner = sock
            self._hit.set()
            log.info("birthday hit: extra socket %d reached %s:%s", sock.index, *source)
        if sock is self.winner:
            self._deliver(data, source)

    def send(self, data: bytes) -> None:
        """Send through the winning socket (what the endpoint uses for ``target`` after a hit)."""
        if self.winner is not None:
            self.winner.send(data)

    def close(self) -> None:
        self.closed = True
        for sock in self._sockets:
            sock.close()
        self._sockets = []


async def spray(
    host: str,
    send: Callable[[bytes, Addr], None],
    build_probe: Callable[[], bytes],
    *,
    stop: Callable[[], bool],
    rng: random.Random | None = None,
    count: int = birthday.PROBES,
    seconds: float = birthday.SPRAY_SECONDS,
) -> int:
    """Probe ``count`` random ports of ``host``, paced evenly over ``seconds`` by the clock (a
    slow event loop sends the overdue ones together, never more, never later than the end)
    until ``stop()``; returns how many were sent."""
    ports = birthday.random_ports(rng or random.Random(), count)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < len(ports) and not stop():
        elapsed = loop.time() - start
        due = len(ports) if elapsed >= seconds else min(len(ports), int(len(ports) * elapsed / seconds) + 1)
        for port in ports[sent:due]:
            send(build_probe(), (host, port))
        sent = max(sent, due)
        await asyncio.sleep(birthday.TICK)
    return sent
