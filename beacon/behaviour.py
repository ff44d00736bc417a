"""The beacon's second UDP port: answers behaviour requests with the address they came from.

Stateless and bounded: one answer per request, smaller than it, at most ``rate`` answers per
second over the whole port (a flood of spoofed requests cannot make it a reflector).

For the filtering check (see :mod:`discretpeer.behaviour`) a request may ask for a cookie (an
HMAC of the address it came from and the time window, answered from this port like any answer),
then, carrying that cookie, for an answer from the beacon's *main* port. That answer goes only to
the very address the request came from, only when the cookie proves that address received the
cookie within the last minute or so, and is no larger than the request; it counts against the same
rate as every other answer. :meth:`BehaviourResponder.decide` is the whole policy, without I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from discretpeer import behaviour
from discretpeer.addresses import Addr

COOKIE_WINDOW = 30.0  # seconds; a cookie is accepted in its window and the next (30-60 s)
COOKIE_LABEL = b"discretpeer behaviour cookie v1"
KEY_LABEL = b"discretpeer behaviour cookie key v1"


def cookie_key(secret: bytes) -> bytes:
    """The cookie key from a beacon secret (its raw private key): beacons sharing cert_der.bin
    (workers, machines) accept each other's cookies; the private key is never an HMAC key itself."""
    if not secret:
        raise ValueError("empty secret")
    return hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()


def make_cookie(key: bytes, address: Addr, window: int) -> bytes:
    """The cookie of ``address`` in time window ``window``; ValueError for an address that is not one."""
    message = COOKIE_LABEL + window.to_bytes(8, "big", signed=True) + behaviour.pack_address(address)
    return hmac.new(key, message, hashlib.sha256).digest()[: behaviour.COOKIE_SIZE]


def cookie_valid(key: bytes, address: Addr, cookie: bytes, now: float) -> bool:
    """Whether ``cookie`` was made for ``address`` in this window or the previous one."""
    window = int(now // COOKIE_WINDOW)
    try:
        expected = [make_cookie(key, address, w) for w in (window, window - 1)]
    except (ValueError, OverflowError):
        return False
    return any(hmac.compare_digest(e, cookie) for e in expected)


@dataclass(frozen=True)
class Reply:
    data: bytes
    to: Addr
    from_main: bool  # send from the beacon's main port instead of this one


class BehaviourResponder(asyncio.DatagramProtocol):
    def __init__(
        self,
        rate: float = 2000.0,
        *,
        key: bytes | None = None,
        send_from_main: Callable[[bytes, Addr], bool] | None = None,
    ) -> None:
        self.rate = rate
        self._allowance = rate
        self._last = time.monotonic()
        self.key = key if key is not None else os.urandom(32)
        # None: this beacon cannot answer from its main port, and answers as one that knows no flags
        self.send_from_main = send_from_main
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.dropped = 0
        self.cookies_given = 0
        self.other_port_answered = 0
        self.cookies_refused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here

    def decide(self, data: bytes, source: Addr, now: float, wall: float) -> Reply | None:
        """The answer to one datagram (``now``: monotonic seconds, ``wall``: Unix time), or None."""
        try:
            req = behaviour.parse_request_fields(data)
        except behaviour.BehaviourError:
            self.dropped += 1
            return None
        source = (source[0], source[1])
        self._allowance = min(self.rate, self._allowance + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._allowance < 1:  # over the rate: dropped before any other work
            self.dropped += 1
            return None
        other_port = self.send_from_main is not None and req.flags & behaviour.FLAG_OTHER_PORT
        if other_port and not cookie_valid(self.key, source, req.cookie, wall):
            self.cookies_refused += 1
            self.dropped += 1
            return None
        try:
            if other_port:
                reply = Reply(behaviour.answer(req.nonce, source), source, True)
            elif self.send_from_main is not None and req.flags & behaviour.FLAG_COOKIE:
                cookie = make_cookie(self.key, source, int(wall // COOKIE_WINDOW))
                reply = Reply(behaviour.cookie_answer(req.nonce, source, cookie), source, False)
            else:
                reply = Reply(behaviour.answer(req.nonce, source), source, False)
        except ValueError:  # not an IP address (cannot come from a UDP socket, but never raise)
            self.dropped += 1
            return None
        self._allowance -= 1
        self.answered += 1
        if reply.from_main:
            self.other_port_answered += 1
        elif len(reply.data) == behaviour.COOKIE_ANSWER_SIZE:
            self.cookies_given += 1
        return reply

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.decide(data, addr, time.monotonic(), time.time())
        if reply is None or self.transport is None:
            return
        if reply.from_main:
            assert self.send_from_main is not None  # decide() answers from the main port only then
            self.send_from_main(reply.data, reply.to)
        else:
            self.transport.sendto(reply.data, reply.to)

    def error_received(self, exc: Exception) -> None:
        pass
