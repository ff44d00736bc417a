"""The beacon's second UDP port: answers behaviour requests with the address they came from.

Stateless and bounded: one answer per request, smaller than it, at most ``rate`` answers per
second over the whole port (a flood of spoofed requests cannot make it a reflector).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from discretpeer import behaviour


class BehaviourResponder(asyncio.DatagramProtocol):
    def __init__(self, rate: float = 2000.0) -> None:
        self.rate = rate
        self._allowance = rate
        self._last = time.monotonic()
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            nonce = behaviour.parse_request(data)
        except behaviour.BehaviourError:
            self.dropped += 1
            return
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now
        if self._allowance < 1 or self.transport is None:
            self.dropped += 1
            return
        self._allowance -= 1
        self.answered += 1
        self.transport.sendto(behaviour.answer(nonce, (addr[0], addr[1])), addr)

    def error_received(self, exc: Exception) -> None:
        pass
