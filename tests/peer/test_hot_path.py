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


async def test_bulk_data_arrives_intact_through_loss_and_reordering_routed_without_parsing(beacon, monkeypatch):
    ia, ib = Identity.generate(), Identity.generate()
    parsed = 0
    parse = endpoint_module.pull_quic_header

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return parse(*args, **kwargs)

    async with (
        loopback_peer(ia, [beacon_entry(beacon)], max_datagram_size=SIZE) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], max_datagram_size=SIZE) as pb,
    ):
        ca, cb = await connect_both(pa, pb)
        for _ in range(150):
            if (ca.datagram_size, cb.datagram_size) == (SIZE, SIZE):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the handshake's last packets (long headers) are done
        to_b = _lossy(pb._endpoint, drop_every=41, swap_every=13)
        to_a = _lossy(pa._endpoint, drop_every=7, swap_every=5)  # ACKs lost and reordered too
        monkeypatch.setattr(endpoint_module, "pull_quic_header", counting_parse)
        await _send_and_check(ca, cb, 3 * 1024 * 1024)
        await _send_and_check(cb, ca, 1024 * 1024)
        print(f"\nlost/reordered towards b: {to_b}, towards a: {to_a}; headers parsed to route: {parsed}")
        assert to_b[0] >= 40 and to_b[1] >= 100 and to_a[0] >= 5
        # the endpoint routed the short-header packets without parsing them
        assert parsed == 0


OFF = Tuning(short_header_routing=False)


async def test_without_the_shortcut_every_header_is_parsed_to_route(beacon, monkeypatch):
    """The comparison that shows the test above can fail: with the shortcut off, every packet's
    header is parsed to route it."""
    ia, ib = Identity.generate(), Identity.generate()
    parsed = 0
    parse = endpoint_module.pull_quic_header

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return parse(*args, **kwargs)

    async with (
        loopback_peer(ia, [beacon_entry(beacon)], max_datagram_size=SIZE, tuning=OFF) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], max_datagram_size=SIZE, tuning=OFF) as pb,
    ):
        ca, cb = await connect_both(pa, pb)
        monkeypatch.setattr(endpoint_module, "pull_quic_header", counting_parse)
        await _send_and_check(ca, cb, 1024 * 1024)
        assert parsed > 500
