"""The bulk data path's per-packet shortcut (issue 18), on real peers over loopback at 1472-byte
datagrams: data arrives intact through loss and reordering, and the endpoint routes short-header
packets without parsing their header (so that the test fails if that silently stops applying)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import Any

import discretpeer.endpoint as endpoint_module
from discretpeer import Identity, Tuning
from tests.conftest import beacon_entry
from tests.peer.test_loopback import connect_both, loopback_peer

SIZE = 1472


def _lossy(endpoint: Any, drop_every: int, swap_every: int) -> list[int]:
    """From now on, datagrams reaching ``endpoint`` with a QUIC short header: every
    ``drop_every``-th is lost, every ``swap_every``-th is held back and delivered after the
    next one (reordered). Returns [dropped, reordered]."""
    counts = [0, 0]
    seen = 0
    held: list[tuple[bytes, Any]] = []
    deliver: Callable[[bytes, Any], None] = endpoint.datagram_received
    # a GRO read handed whole to a qh3 connection would pass by this shim: split them all
    endpoint._receive_coalesced = lambda *args: False

    def datagram_received(data: bytes, addr: Any) -> None:
        nonlocal seen
        if not data or data[0] & 0xC0 != 0x40:  # long headers and non-QUIC: untouched
            deliver(data, addr)
            return
        seen += 1
        if seen % drop_every == 0:
            counts[0] += 1
            return
        if seen % swap_every == 0 and not held:
            held.append((data, addr))
            counts[1] += 1
            return
        deliver(data, addr)
        while held:
            deliver(*held.pop())

    endpoint.datagram_received = datagram_received
    return counts


async def _send_and_check(sender, receiver, total: int) -> None:
    """``total`` random bytes on a new stream, ended; the receiver reads them to the end."""
    payload = os.urandom(total)
    w_opened = asyncio.ensure_future(sender.open_stream())
    _, w = await w_opened

    async def write() -> None:
        for offset in range(0, total, 64 * 1024):
            w.write(payload[offset : offset + 64 * 1024])
            await w.drain()
        w.write_eof()

    writing = asyncio.ensure_future(write())
    r, _ = await asyncio.wait_for(receiver.accept_stream(), 10)
    received = await asyncio.wait_for(r.read(), 60)
    await writing
    assert len(received) == total and hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


class ParseCounter:
    """Counts the endpoint's header parses (to route a datagram) once installed."""

    def __init__(self, monkeypatch: Any) -> None:
        self.count = 0
        self._monkeypatch = monkeypatch
        self._parse = endpoint_module.pull_quic_header

    def _counting(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self._parse(*args, **kwargs)

    def install(self) -> None:
        self._monkeypatch.setattr(endpoint_module, "pull_quic_header", self._counting)


def sized_peers(beacon: Any, tuning: Tuning | None = None) -> tuple[Any, Any]:
    extra = {} if tuning is None else {"tuning": tuning}
    entry = [beacon_entry(beacon)]
    return (
        loopback_peer(Identity.generate(), entry, max_datagram_size=SIZE, **extra),
        loopback_peer(Identity.generate(), entry, max_datagram_size=SIZE, **extra),
    )


async def test_bulk_data_arrives_intact_through_loss_and_reordering_routed_without_parsing(beacon, monkeypatch):
    parsed = ParseCounter(monkeypatch)
    one, two = sized_peers(beacon)
    async with one as pa, two as pb:
        ca, cb = await connect_both(pa, pb)
        for _ in range(150):
            if (ca.datagram_size, cb.datagram_size) == (SIZE, SIZE):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the handshake's last packets (long headers) are done
        to_b = _lossy(pb._endpoint, drop_every=41, swap_every=13)
        to_a = _lossy(pa._endpoint, drop_every=7, swap_every=5)  # ACKs lost and reordered too
        parsed.install()
        await _send_and_check(ca, cb, 3 * 1024 * 1024)
        await _send_and_check(cb, ca, 1024 * 1024)
        print(f"\nlost/reordered towards b: {to_b}, towards a: {to_a}; headers parsed to route: {parsed.count}")
        assert to_b[0] >= 40 and to_b[1] >= 100 and to_a[0] >= 5
        # the endpoint routed the short-header packets without parsing them
        assert parsed.count == 0


async def test_without_the_shortcut_every_header_is_parsed_to_route(beacon, monkeypatch):
    """The comparison that shows the test above can fail: with the shortcut off, every packet's
    header is parsed to route it."""
    parsed = ParseCounter(monkeypatch)
    one, two = sized_peers(beacon, Tuning(short_header_routing=False))
    async with one as pa, two as pb:
        ca, cb = await connect_both(pa, pb)
        parsed.install()
        await _send_and_check(ca, cb, 1024 * 1024)
        assert parsed.count > 500
