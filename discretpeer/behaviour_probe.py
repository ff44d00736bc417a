"""Ask a beacon's second port where our packets come from (I/O side of :mod:`discretpeer.behaviour`).

Sent from the peer's one socket: the NAT's mapping towards the beacon's main port (the Welcome's
``observed``) against the one towards its second port tells whether the NAT maps per
destination. Answers must echo an outstanding nonce and come from the address asked.

Two more checks for ``discretpeer doctor``: hairpinning (a probe from the peer's socket to its
own public address, :meth:`BehaviourProber.hairpin`) and filtering (:func:`probe_filtering`, from
a fresh socket that has only ever sent to the beacon's second port: does an answer from its main
port come in?).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from discretpeer import behaviour
from discretpeer.addresses import Addr
from discretpeer.proto.wire import MAPPING_DEPENDENT, MAPPING_INDEPENDENT, MAPPING_UNKNOWN

T = TypeVar("T")
MAX_OUTSTANDING = 8
RESENDS = (0.0, 0.2, 0.4)  # three tries over 0.6 s: a lost packet costs one short wait, no more


async def ask(send: Callable[[], None], future: asyncio.Future[T], timeout: float = 0.6) -> T | None:
    """Send three times (RESENDS, compressed when ``timeout`` is shorter than 0.6 s) until
    ``future`` is done; its result as soon as it is, or None once ``timeout`` seconds have passed
    since the first send (and a little after the last one)."""
    loop = asyncio.get_running_loop()
    scale = min(1.0, timeout / 0.6)
    resends = [at * scale for at in RESENDS]
    started = loop.time()
    deadline = started + max(timeout, resends[-1] + 0.05 * scale)
    for next_at in (*resends[1:], None):
        if future.done():
            break
        send()
        until = deadline if next_at is None else started + next_at
        await asyncio.wait({future}, timeout=max(0.0, until - loop.time()))
    if not future.done():
        await asyncio.wait({future}, timeout=max(0.0, deadline - loop.time()))
    return future.result() if future.done() and not future.cancelled() else None


class BehaviourProber:
    def __init__(self, sendto: Callable[[bytes, Addr], None]) -> None:
        self._sendto = sendto
        self._waiting: dict[bytes, tuple[Addr, asyncio.Future[Addr]]] = {}
        self._hairpins: dict[bytes, asyncio.Future[float]] = {}

    def on_datagram(self, data: bytes, source: Addr) -> bool:
        """True if ``data`` was a behaviour answer or a hairpin probe (consumed, valid or not)."""
        if not behaviour.is_behaviour(data):
            return False
        if len(data) == behaviour.HAIRPIN_SIZE:
            with contextlib.suppress(behaviour.BehaviourError):
                # from any source: a hairpinning NAT rewrites the sender of what it turns round
                hairpin = self._hairpins.get(behaviour.parse_hairpin_probe(data))
                if hairpin is not None and not hairpin.done():
                    hairpin.set_result(time.monotonic())
            return True
        try:
            nonce, observed = behaviour.parse_answer(data)
        except behaviour.BehaviourError:
            return True
        entry = self._waiting.get(nonce)
        if entry is not None and entry[0] == source and not entry[1].done():
            entry[1].set_result(observed)
        return True

    async def observe(self, target: Addr, timeout: float = 0.6) -> Addr | None:
        """Our address as ``target`` (a beacon's behaviour port) sees it, or None (bounded)."""
        if len(self._waiting) >= MAX_OUTSTANDING:
            return None
        nonce = os.urandom(behaviour.NONCE_SIZE)
        future: asyncio.Future[Addr] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = (target, future)
        request = behaviour.request(nonce)
        try:
            return await ask(lambda: self._sendto(request, target), future, timeout)
        finally:
            self._waiting.pop(nonce, None)

    async def hairpin(self, public: Addr, timeout: float = 0.6) -> float | None:
        """Seconds until a probe sent from this socket to ``public`` (our own public address)
        came back to it through the NAT, or None (bounded: three sends within ``timeout``)."""
        if len(self._hairpins) >= MAX_OUTSTANDING:
            return None
        nonce = os.urandom(behaviour.NONCE_SIZE)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._hairpins[nonce] = future
        probe = behaviour.hairpin_probe(nonce)
        started = time.monotonic()
        try:
            back = await ask(lambda: self._sendto(probe, public), future, timeout)
        finally:
            self._hairpins.pop(nonce, None)
        return None if back is None else back - started


def classify(main: Addr | None, second: Addr | None) -> int:
    """MAPPING_* from our address at the beacon's main port and at its second port."""
    if main is None or second is None:
        return MAPPING_UNKNOWN
    return MAPPING_INDEPENDENT if tuple(main) == tuple(second) else MAPPING_DEPENDENT


# --- filtering (doctor) -------------------------------------------------------------------------

FILTER_OPEN = "open"  # the main port's answer came in: not port-dependent
FILTER_PORT_DEPENDENT = "port-dependent"  # the beacon gave a cookie, its main port's answer never came
FILTER_UNSUPPORTED = "unsupported"  # the beacon answered without a cookie: it cannot answer from its main port
FILTER_NO_ANSWER = "no-answer"  # the behaviour port did not answer at all


@dataclass
class FilteringResult:
    outcome: str  # FILTER_*
    observed: Addr | None  # the fresh socket's public address, as the behaviour port saw it
    seconds: float  # the whole check
    answer_seconds: float | None = None  # request with the cookie -> the main port's answer


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.on_datagram: Callable[[bytes, Addr], None] = lambda data, source: None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the check just times out
        pass


async def probe_filtering(host: str | None, second: Addr, main: Addr, timeout: float = 0.6) -> FilteringResult:
    """Does our NAT let in packets from a port we never sent to? From a fresh UDP socket (so no
    mapping of ours has ever sent to ``main``): a cookie from ``second`` (the beacon's behaviour
    port), then a request with it asking for the answer from ``main``. Bounded: two exchanges of
    at most three sends each, ``timeout`` seconds each."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    six = ":" in second[0]
    if not host or (":" in host) != six:
        host = "::" if six else "0.0.0.0"
    transport, protocol = await loop.create_datagram_endpoint(
        _Socket, local_addr=(host, 0), family=socket.AF_INET6 if six else socket.AF_INET
    )
    try:
        first = os.urandom(behaviour.NONCE_SIZE)
        got: asyncio.Future[tuple[Addr, bytes | None]] = loop.create_future()

        def on_first(data: bytes, source: Addr) -> None:
            if source != second or got.done():
                return
            with contextlib.suppress(behaviour.BehaviourError):
                nonce, observed, cookie = behaviour.parse_cookie_answer(data)
                if nonce == first:
                    got.set_result((observed, cookie))
                return
            with contextlib.suppress(behaviour.BehaviourError):
                nonce, observed = behaviour.parse_answer(data)  # a beacon that knows no flags
                if nonce == first:
                    got.set_result((observed, None))

        protocol.on_datagram = on_first
        ask_cookie = behaviour.request(first, behaviour.FLAG_COOKIE)
        answer = await ask(lambda: transport.sendto(ask_cookie, second), got, timeout)
        if answer is None:
            return FilteringResult(FILTER_NO_ANSWER, None, time.monotonic() - started)
        observed, cookie = answer
        if cookie is None:
            return FilteringResult(FILTER_UNSUPPORTED, observed, time.monotonic() - started)

        again = os.urandom(behaviour.NONCE_SIZE)
        came: asyncio.Future[float] = loop.create_future()

        def on_second(data: bytes, source: Addr) -> None:
            if source != main or came.done():
                return
            with contextlib.suppress(behaviour.BehaviourError):
                if behaviour.parse_answer(data)[0] == again:
                    came.set_result(time.monotonic())

        protocol.on_datagram = on_second
        ask_other = behaviour.request(again, behaviour.FLAG_OTHER_PORT, cookie)
        asked = time.monotonic()
        arrived = await ask(lambda: transport.sendto(ask_other, second), came, timeout)
        if arrived is None:
            return FilteringResult(FILTER_PORT_DEPENDENT, observed, time.monotonic() - started)
        return FilteringResult(FILTER_OPEN, observed, time.monotonic() - started, arrived - asked)
    finally:
        transport.close()
