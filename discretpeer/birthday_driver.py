"""Runs birthday probing for the pairs of a peer (plan: :mod:`discretpeer.birthday`, sockets and
spraying: :mod:`discretpeer.birthday_io`).

Started for a pair whose sides differ in mapping behaviour (known from two beacons or a
beacon's behaviour port) when no path is confirmed shortly after the introduction. A hit on the
symmetric side makes its winning socket the way to the other peer's address (``Endpoint.via``):
the usual probes then confirm that address, the pair dials it or moves its relayed connection
there (the route switch keeps streams intact), and the other side learns the new address from
those probes. Winning sockets are kept (at most ``MAX_KEPT``, oldest closed) until the peer closes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from discretpeer import birthday
from discretpeer.addresses import Addr
from discretpeer.beacon_client import own_mapping_varies
from discretpeer.birthday_io import ExtraSockets, spray
from discretpeer.logs import get_logger
from discretpeer.proto.probe import NONCE_SIZE, ProbeError, ProbeKind, build_probe, parse_probe
from discretpeer.traversal import CandidateKind

if TYPE_CHECKING:
    from discretpeer.pairs import Pair, PairDriver

log = get_logger("discretpeer.birthday")

MAX_KEPT = 16


class BirthdayDriver:
    def __init__(self, driver: PairDriver, spawn: Callable[[Any, str], asyncio.Task[Any]] | None = None) -> None:
        self.driver = driver
        self.spawn = spawn or (lambda coro, name: asyncio.ensure_future(coro))
        self.kept: list[ExtraSockets] = []

    def maybe_start(self, pair: Pair) -> None:
        d = self.driver
        running = pair.birthday_task is not None and not pair.birthday_task.done()
        if not d.settings.direct_enabled or running or d.endpoint is None:
            return
        what = birthday.role(own_mapping_varies(d.clients), pair.remote_mapping_varies())
        if what is None:
            return
        pair.birthday_task = self.spawn(self._attempt(pair, what), f"birthday {what}")

    def _settled(self, pair: Pair) -> bool:
        """A direct path already: nothing to do (a relayed connection still wants one)."""
        connection = pair.live_connection()
        if connection is not None and connection.path != "relay":
            return True
        return bool(pair.session.confirmed())

    async def _attempt(self, pair: Pair, what: str) -> None:
        await asyncio.sleep(birthday.START_AFTER)
        if self._settled(pair):
            return
        d = self.driver
        key = pair.meeting.keys.probe_key
        token, instance = pair.session.token, d.settings.instance

        def ping() -> bytes:
            return build_probe(ProbeKind.PING, token, instance, os.urandom(NONCE_SIZE), key)

        public = [c.address for c in pair.session.candidates.values() if c.kind is CandidateKind.PUBLIC]
        if not public:
            return
        d.stats.birthday_attempts += 1
        started = time.monotonic()
        if what == "spray":
            await asyncio.sleep(birthday.SPRAY_AFTER)
            sent = await spray(public[0][0], self._send, ping, stop=lambda: self._settled(pair) or d.endpoint is None)
            d.stats.birthday_packets += sent
            log.info(
                "birthday spray done",
                probes=sent,
                seconds=round(time.monotonic() - started, 2),
                settled=self._settled(pair),
            )
            return
        target = public[0]

        def verify(data: bytes) -> bool:
            try:
                probe = parse_probe(data)
            except ProbeError:
                return False
            return probe.token == token and probe.instance == pair.session.remote_instance and probe.verify(key)

        endpoint = d.endpoint
        assert endpoint is not None
        extra = ExtraSockets(target, build_probe=ping, verify=verify, deliver=endpoint.datagram_received)
        try:
            hit = await extra.run(stop=lambda: self._settled(pair) or d.endpoint is None)
        finally:
            d.stats.birthday_packets += extra.packets_sent
        seconds = round(time.monotonic() - started, 2)
        log.info("birthday sockets done", hit=hit, packets=extra.packets_sent, seconds=seconds)
        if not hit:
            return
        d.stats.birthday_hits += 1
        endpoint.via[target] = extra.send
        self.kept.append(extra)
        while len(self.kept) > MAX_KEPT:
            old = self.kept.pop(0)
            if endpoint.via.get(old.target) == old.send:
                del endpoint.via[old.target]
            old.close()
        # probe the address afresh, now through the winning socket: it confirms, then the pair
        # dials it or moves its connection there
        pair.session.extend(time.monotonic(), 3.0, interval=0.1, fast_period=1.0)
        d.wake.set()
        d.dialer.maybe_dial(pair)

    def _send(self, data: bytes, address: Addr) -> None:
        endpoint = self.driver.endpoint
        if endpoint is not None:
            endpoint.sendto(data, address)

    def close(self) -> None:
        for extra in self.kept:
            extra.close()
        self.kept.clear()
