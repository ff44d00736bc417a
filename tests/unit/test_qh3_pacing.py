"""qh3's sends paced by discretpeer.send_pacer: two real qh3 connections (our Qh3Connection)
move a stream over a simulated 80 ms path, driven through the sans-I/O API on a simulated clock
as the protocol layer drives them (datagrams_to_send, get_timer, handle_timer)."""

from __future__ import annotations

import heapq
import itertools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import pull_quic_header

from certs.bundle import create_bundle
from discretpeer._qh3 import Qh3Connection
from discretpeer.path_mtu import SizedQuicConfiguration
from discretpeer.send_pacer import MIN_BURST_DATAGRAMS, MIN_BURST_SECONDS, PACING_GAIN
from discretpeer.tuning import Tuning

CLIENT, SERVER = ("192.0.2.1", 4000), ("192.0.2.2", 5000)  # documentation addresses, never sent to
ONE_WAY = 0.040


@dataclass
class Transfer:
    sends: list[tuple[float, int]] = field(default_factory=list)  # the sender's (time, bytes) per datagram
    rates: list[tuple[float, float]] = field(default_factory=list)  # (time, pacing rate) per transmit
    received: int = 0
    receiver_sent: int = 0  # bytes the receiver sent once the stream started (its ACKs)
    receiver_paced: int = 0  # of all it sent, what its pacer counted
    finished_at: float | None = None


def _move(
    size: int,
    paced: bool,
    limit: float = 20.0,
    when_paced: Callable[[Qh3Connection, float], None] | None = None,
    pause_then: tuple[float, int] | None = None,
) -> Transfer:
    """The client writes ``size`` bytes on one stream; the server reads them all (simulated time).
    ``when_paced(client, now)``: called (and the simulation ends) the first time the client's
    pacer holds datagrams back during the transfer. ``pause_then``: (seconds, bytes): once the
    server has the stream, the client waits that long and writes that much on a second stream
    (``Transfer.sends`` then holds the second stream's datagrams only)."""
    bundle = create_bundle()
    tuning = Tuning(qh3_pacer=paced)
    client = Qh3Connection(
        configuration=SizedQuicConfiguration(
            is_client=True, alpn_protocols=["t"], tuning=tuning, verify_mode=ssl.CERT_NONE
        )
    )
    server_config = SizedQuicConfiguration(is_client=False, alpn_protocols=["t"], tuning=tuning)
    server_config.certificate, server_config.private_key = bundle.certificate, bundle.private_key
    server: Qh3Connection | None = None
    wire: list[tuple[float, int, tuple[str, int], bytes]] = []  # (arrives at, order, to, datagram)
    order = itertools.count()
    out = Transfer()
    now, stream_id = 0.0, None
    second_at: float | None = None  # when the client writes the second stream (pause_then)
    client.connect(SERVER, now)
    while now < limit and out.finished_at is None:
        if second_at is not None and now >= second_at and pause_then is not None:
            second_at, out.sends = None, []
            stream_id = client.get_next_available_stream_id()
            client.send_stream_data(stream_id, bytes(pause_then[1]), end_stream=True)
        for side in (client, server):
            if side is None:
                continue
            datagrams = side.datagrams_to_send(now)
            if side is client and datagrams and client.inner._core is not None:
                core = client.inner._core
                out.rates.append((now, core.congestion_window / (core.smoothed_rtt or 1.0)))
            if side is client and when_paced is not None and stream_id is not None and client._paced_until:
                when_paced(client, now)
                return out
            for data, to in datagrams:
                if side is client and stream_id is not None:
                    out.sends.append((now, len(data)))
                elif side is server and stream_id is not None:
                    out.receiver_sent += len(data)
                heapq.heappush(wire, (now + ONE_WAY, next(order), to, data))
        due = [t for t in (client.get_timer(), server.get_timer() if server else None) if t is not None]
        if wire:
            due.append(wire[0][0])
        if second_at is not None:
            due.append(second_at)
        if not due:
            break
        now = max(now, min(due))
        while wire and wire[0][0] <= now:
            _, _, to, data = heapq.heappop(wire)
            if to == SERVER:
                if server is None:
                    odcid = pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid
                    server = Qh3Connection(configuration=server_config, original_destination_connection_id=odcid)
                server.receive_datagram(data, CLIENT, now)
            else:
                client.receive_datagram(data, SERVER, now)
        for side in (client, server):
            if side is not None and (timer := side.get_timer()) is not None and timer <= now:
                side.handle_timer(now)
        while (event := client.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                stream_id = client.get_next_available_stream_id()
                client.send_stream_data(stream_id, bytes(size), end_stream=True)
        while server is not None and (event := server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                out.received += len(event.data)
                if event.end_stream and pause_then is not None and out.received == size:
                    second_at = now + pause_then[0]
                elif event.end_stream:
                    out.finished_at = now
    if server is not None and server._pacer is not None:
        out.receiver_paced = server._pacer.paced_bytes
    return out


def _largest_burst(sends: list[tuple[float, int]], span: float) -> int:
    """The most bytes the sender let go within any ``span`` seconds."""
    largest, start, total = 0, 0, 0
    for end in range(len(sends)):
        total += sends[end][1]
        while sends[end][0] - sends[start][0] > span:
            total -= sends[start][1]
            start += 1
        largest = max(largest, total)
    return largest


def _bound(transfer: Transfer) -> float:
    """The most a paced sender may let go within any millisecond: the bucket (16 datagrams or
    4 ms of the rate) plus a millisecond's refill and one overdraw, at the highest rate reached."""
    datagram = max(n for _, n in transfer.sends)
    top_rate = PACING_GAIN * max(rate for _, rate in transfer.rates)
    return max(MIN_BURST_DATAGRAMS * datagram, top_rate * MIN_BURST_SECONDS) + top_rate * 0.001 + datagram


@pytest.mark.parametrize(
    "pause_then",
    [None, (0.5, 2_000_000)],
    ids=["one stream from the start", "a second stream after a pause"],
)
def test_qh3_sends_leave_paced_and_the_transfer_is_as_fast(pause_then: tuple[float, int] | None) -> None:
    size = 3_000_000
    unpaced = _move(size, paced=False, pause_then=pause_then)
    paced = _move(size, paced=True, pause_then=pause_then)
    total = size + (pause_then[1] if pause_then else 0)
    assert unpaced.received == paced.received == total
    assert unpaced.finished_at is not None and paced.finished_at is not None
    # qh3's own pacer lets more go at once (its bucket is the congestion window: at slow start's
    # doubling, and after a pause) than ours allows at the same rates
    assert _largest_burst(unpaced.sends, 0.001) > 1.5 * _bound(paced)
    assert _largest_burst(paced.sends, 0.001) <= _bound(paced)
    # and pacing at 1.25x the window per round trip costs a path without a bottleneck little time
    assert paced.finished_at <= 1.05 * unpaced.finished_at
    # the receiver's ACKs are not in flight and not paced: its own tiny window never holds them
    assert paced.receiver_sent > 20_000
    assert paced.receiver_paced < 0.1 * paced.receiver_sent


def test_a_close_leaves_at_once_even_when_the_pacer_holds_data_back() -> None:
    """Its owner may drop the connection right after closing it: the close must not wait for the
    pacer's next slot."""
    closes: list[int] = []

    def close(client: Qh3Connection, now: float) -> None:
        assert not client.datagrams_to_send(now)  # the pacer holds the stream's data back
        client.close(error_code=0, reason_phrase="done")
        closes.append(len(client.datagrams_to_send(now)))
        assert client._paced_until is None

    _move(3_000_000, paced=True, when_paced=close)
    assert closes == [1]
