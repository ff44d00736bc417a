"""A stream's writer yields to the event loop after ``Tuning.write_slice`` bytes in one loop
iteration, even when its water marks would let it go on (they follow a large flight): real peers,
real QUIC on loopback, on both stacks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from discretpeer import Identity
from discretpeer.connection import PeerConnection
from discretpeer.tuning import WRITE_SLICE, Tuning
from tests.conftest import beacon_entry
from tests.support.peers import connect_both, loopback_peer

CHUNK = 64 * 1024
TOTAL = 16 * 1024 * 1024
MIB = 1024 * 1024


def _never_waits_for_marks(stack: str, write_slice: int) -> Tuning:
    """Water marks above everything the test writes: only the slice can make drain() wait."""
    return Tuning(
        quic_stack=stack,
        stream_high_water=64 * MIB,
        stream_low_water=48 * MIB,
        stream_high_water_max=64 * MIB,
        write_slice=write_slice,
    )


@contextlib.asynccontextmanager
async def _connected(beacon, tuning: Tuning) -> AsyncIterator[tuple[PeerConnection, PeerConnection]]:
    """Two loopback peers with ``tuning``, connected: both ends."""
    entry = [beacon_entry(beacon)]
    async with (
        loopback_peer(Identity.generate(), entry, tuning=tuning) as pa,
        loopback_peer(Identity.generate(), entry, tuning=tuning) as pb,
    ):
        yield await connect_both(pa, pb)


async def _longest_run_without_the_loop(writer: asyncio.StreamWriter) -> int:
    """Write TOTAL bytes as ``write(); await drain()``: the most consecutive writes during which
    no other task ran."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    longest = run = 0
    seen = ticks
    try:
        for _ in range(TOTAL // CHUNK):
            writer.write(b"w" * CHUNK)
            await writer.drain()
            run = run + 1 if ticks == seen else 1
            seen = ticks
            longest = max(longest, run)
    finally:
        running.cancel()
    return longest


@pytest.mark.parametrize("stack", ["qh3", "aioquic"])
@pytest.mark.parametrize(
    ("write_slice", "longest_allowed"),
    [
        (WRITE_SLICE, WRITE_SLICE // CHUNK),  # 16 writes of 64 KiB, then the loop's turn
        (256 * 1024, 4),
        # off: nothing stops the writer before 16 MiB (what a large flight allowed before)
        (0, TOTAL // CHUNK),
    ],
    ids=["default", "256k", "off"],
)
async def test_a_writer_that_the_marks_let_go_on_yields_every_slice(beacon, stack, write_slice, longest_allowed):
    async with _connected(beacon, _never_waits_for_marks(stack, write_slice)) as (ca, cb):
        reader, writer = await ca.open_stream()
        longest = await _longest_run_without_the_loop(writer)
        if write_slice:
            assert 1 <= longest <= longest_allowed
        else:
            assert longest == longest_allowed  # the whole transfer in one loop iteration
        writer.write_eof()
        # everything written arrives, in order, and the stream ends
        incoming, _ = await cb.accept_stream()
        got = 0
        while True:
            data = await asyncio.wait_for(incoming.read(1 << 20), 10)
            if not data:
                break
            assert data == b"w" * len(data)
            got += len(data)
        assert got == TOTAL


@pytest.mark.parametrize("stack", ["qh3", "aioquic"])
async def test_the_end_of_a_slice_leaves_a_writer_paused_for_its_marks_paused(beacon, stack):
    """The first write of an iteration schedules the slice's end; a write later in that iteration
    passes the high mark: the end of the slice must not resume that writer (only acknowledgements
    may), whatever the slice's size."""
    tuning = Tuning(quic_stack=stack, stream_high_water_max=2 * MIB, write_slice=64 * MIB)
    async with _connected(beacon, tuning) as (ca, cb):
        _, writer = await ca.open_stream()
        # 12 MiB in one iteration, to a reader that reads nothing: past the 8 MiB receive window,
        # so at least 4 MiB stay unacknowledged, far above the marks (at most 2 MiB)
        for _ in range(12 * MIB // CHUNK):
            writer.write(b"p" * CHUNK)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(writer.drain(), 0.5)
        incoming, _ = await cb.accept_stream()
        got = 0
        while got < 12 * MIB:
            got += len(await asyncio.wait_for(incoming.read(1 << 20), 10))
        await asyncio.wait_for(writer.drain(), 10)  # read, acknowledged: the writer goes on
