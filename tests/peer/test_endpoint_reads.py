"""The endpoint's own socket reader on asyncio's loop (discretpeer.endpoint.Endpoint._read_ready):
several datagrams per wakeup, and an ICMP error on the socket does not stop it; and its sender
(send_many): GSO runs, each datagram where its route says. Real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import discretpeer.endpoint as endpoint_module
from discretpeer.endpoint import Endpoint
from discretpeer.paths import RelayLink
from discretpeer.proto.relay_frame import build_relay_frame
from discretpeer.proto.wire import RELAY_SESSION_ID_SIZE
from discretpeer.tuning import Tuning


async def _received_after_iterations(batch: int, monkeypatch, count: int = 10, iterations: int = 3) -> int:
    monkeypatch.setattr(endpoint_module, "READ_BATCH", batch)
    got: list[bytes] = []
    endpoint = await Endpoint.open("127.0.0.1", 0, on_datagram=lambda data, addr: got.append(data))
    try:
        assert endpoint.batched_reads == (batch > 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for index in range(count):
                sender.sendto(b"\x00probe %d" % index, endpoint.local_address)  # no fixed bit: not QUIC
            time.sleep(0.05)  # the loop blocked: all queued in the socket, seen at once on its next select
            for _ in range(iterations):
                await asyncio.sleep(0)
            received = len(got)
            for _ in range(100):  # and the rest arrive anyway, in order
                if len(got) == count:
                    break
                await asyncio.sleep(0.01)
            assert got == [b"\x00probe %d" % index for index in range(count)]
            return received
    finally:
        endpoint.close()


async def test_asyncio_loop_reads_every_waiting_datagram_in_one_wakeup(monkeypatch):
    assert await _received_after_iterations(64, monkeypatch) == 10


async def test_without_batching_asyncio_reads_one_datagram_per_wakeup(monkeypatch):
    # the comparison that shows what the batch changes (and that the test above can fail)
    assert await _received_after_iterations(1, monkeypatch) <= 3


async def test_an_icmp_error_does_not_stop_the_reader():
    got: list[bytes] = []
    endpoint = await Endpoint.open("127.0.0.1", 0, on_datagram=lambda data, addr: got.append(data))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind(("127.0.0.1", 0))
            dead = closed.getsockname()
        for _ in range(3):
            endpoint.sendto(b"\x00to nobody", dead)  # the kernel answers port unreachable
        await asyncio.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"\x00still here", endpoint.local_address)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
        assert got == [b"\x00still here"]
    finally:
        endpoint.close()
    assert endpoint.closed


def _require_gso(endpoint: Endpoint) -> None:
    """The GSO tests need a kernel with UDP_SEGMENT (Linux 4.18+): skipped on an older one,
    a failure under CI (whose machine has it)."""
    if endpoint.gso:
        return
    if os.environ.get("CI"):
        pytest.fail("this kernel has no UDP_SEGMENT (Linux 4.18+), and CI must test GSO", pytrace=False)
    pytest.skip("this kernel has no UDP_SEGMENT (Linux 4.18+): nothing to test GSO with")


async def _pair(gso: bool) -> tuple[Endpoint, Endpoint, list[bytes]]:
    """Two endpoints, both with GSO and GRO on (where the kernel has them) or off (Tuning.gso)."""
    got: list[bytes] = []
    tuning = Tuning(gso=gso)
    receiver = await Endpoint.open("127.0.0.1", 0, on_datagram=lambda data, addr: got.append(data), tuning=tuning)
    sender = await Endpoint.open("127.0.0.1", 0, tuning=tuning)
    return sender, receiver, got


async def _wait_for(got: list[bytes], count: int) -> None:
    for _ in range(200):
        if len(got) >= count:
            return
        await asyncio.sleep(0.01)


def _datagrams(sizes: list[int]) -> list[bytes]:
    # no QUIC fixed bit: the receiving endpoint hands them to on_datagram as they are
    return [bytes([0, index]) + bytes([index]) * (size - 2) for index, size in enumerate(sizes)]


async def test_equal_datagrams_leave_in_one_gso_send_and_arrive_apart_in_order(monkeypatch):
    sender, receiver, got = await _pair(gso=True)
    try:
        _require_gso(sender)
        sizes = [1472] * 9 + [700]  # the last of a run may be shorter
        datagrams = _datagrams(sizes)
        sender.send_many([(d, receiver.local_address) for d in datagrams])
        await _wait_for(got, len(datagrams))
        assert got == datagrams  # each datagram on its own, in order (GRO split them back)
        assert sender.gso_sends == 1 and sender.datagrams_sent == 10
        assert receiver.gro
    finally:
        sender.close()
        receiver.close()


async def test_mixed_sizes_and_addresses_split_into_runs(monkeypatch):
    sender, receiver, got = await _pair(gso=True)
    other_got: list[bytes] = []
    other = await Endpoint.open("127.0.0.1", 0, on_datagram=lambda data, addr: other_got.append(data))
    try:
        datagrams = _datagrams([1200, 1200, 1300, 1300, 1300, 100, 1200, 1200])
        targets = [receiver.local_address] * 5 + [other.local_address] + [receiver.local_address] * 2
        sender.send_many(list(zip(datagrams, targets, strict=True)))
        await _wait_for(got, 7)
        await _wait_for(other_got, 1)
        assert got == datagrams[:5] + datagrams[6:] and other_got == [datagrams[5]]
        if sender.gso:
            # [1200, 1200] [1300, 1300, 1300] [100 elsewhere] [1200, 1200]: three GSO sends
            assert sender.gso_sends == 3
    finally:
        for endpoint in (sender, receiver, other):
            endpoint.close()


async def test_without_gso_and_gro_the_same_datagrams_arrive(monkeypatch):
    sender, receiver, got = await _pair(gso=False)
    try:
        datagrams = _datagrams([1472] * 10)
        sender.send_many([(d, receiver.local_address) for d in datagrams])
        await _wait_for(got, 10)
        assert got == datagrams and sender.gso_sends == 0 and not sender.gso and not receiver.gro
    finally:
        sender.close()
        receiver.close()


async def test_a_datagram_above_the_connection_size_never_rides_in_a_gso_batch(monkeypatch):
    """A path-MTU probe (longer than the connection's datagram size) goes alone: a GSO batch
    leaves without DF when it is larger than the route MTU, so a probe in it could cross a
    smaller link as fragments and confirm a size the path does not carry."""
    sender, receiver, got = await _pair(gso=True)
    try:
        _require_gso(sender)
        datagrams = _datagrams([1350, 1350, 1472, 1350, 1350, 1350])
        sender.send_many([(d, receiver.local_address) for d in datagrams], max_size=1350)
        await _wait_for(got, len(datagrams))
        assert got == datagrams
        assert sender.gso_sends == 2  # [1350, 1350], the probe alone, [1350, 1350, 1350]
    finally:
        sender.close()
        receiver.close()


SO_NO_CHECK = 11  # Linux: no UDP checksums on this socket, so the kernel refuses GSO sends (EINVAL)


async def test_a_destination_that_refuses_every_send_leaves_gso_on(monkeypatch):
    """Port 0 refuses GSO and plain sends alike (EINVAL, nothing leaves the host), as a route-less
    address does (ENETUNREACH): the socket keeps its batches for every other destination."""
    sender, receiver, got = await _pair(gso=True)
    try:
        _require_gso(sender)
        sender.send_many([(d, ("127.0.0.1", 0)) for d in _datagrams([1200] * 3)])
        sender.send_run(b"\0" * 3000, 1000, ("127.0.0.1", 0))
        assert sender.gso and sender.gso_sends == 0
        assert sender.send_errors >= 2  # each run's first datagram, tried alone
        datagrams = _datagrams([1300] * 4)
        sender.send_many([(d, receiver.local_address) for d in datagrams])
        await _wait_for(got, 4)
        assert got == datagrams and sender.gso_sends == 1
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("how", ["send_many", "send_run"])
async def test_a_socket_that_refuses_gso_itself_sends_plain_from_then_on(monkeypatch, how):
    """Checksums off: the kernel refuses every GSO send on the socket, a plain one goes. The run
    that found out arrives whole, and later runs go one by one."""
    sender, receiver, got = await _pair(gso=True)
    try:
        _require_gso(sender)
        sender.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        first, then = _datagrams([1300] * 4), _datagrams([1250] * 3)
        for run in (first, then):
            if how == "send_many":
                sender.send_many([(d, receiver.local_address) for d in run])
            else:
                sender.send_run(b"".join(run), len(run[0]), receiver.local_address)
        await _wait_for(got, 7)
        assert got == first + then
        assert not sender.gso and sender.gso_sends == 0 and sender.send_errors == 0
    finally:
        sender.close()
        receiver.close()


def _receive_all(sock: socket.socket, count: int, timeout: float = 2.0) -> list[bytes]:
    sock.settimeout(timeout)
    return [sock.recv(65536) for _ in range(count)]


async def test_each_datagram_of_a_transmit_leaves_as_its_route_says(monkeypatch):
    """send_many resolves an address once per run of datagrams to it: a direct route's go out
    unchanged (in GSO batches), a relay route's each in its own relay frame to the beacon, an
    address with a birthday socket through that socket, a relay frame to a beacon reached over
    TCP to that link; interleaved in one transmit, and a route switched between two transmits
    is followed at once."""
    sender = await Endpoint.open("127.0.0.1", 0, tuning=Tuning(gso=True))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    beacon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        beacon.bind(("127.0.0.1", 0))
        session = bytes(range(RELAY_SESSION_ID_SIZE))
        direct = sender.routes.new(direct=peer.getsockname())
        relayed = sender.routes.new(relay=RelayLink(session, beacon.getsockname()))
        birthday: list[bytes] = []
        sender.via[("127.0.0.1", 9)] = birthday.append  # the discard port: never sent to
        through_birthday = sender.routes.new(direct=("127.0.0.1", 9))
        linked: list[bytes] = []
        tcp_beacon = sender.routes.new(relay=RelayLink(session, ("127.0.0.1", 7)))
        sender.stream_links[("127.0.0.1", 7)] = linked.append  # the echo port: never sent to
        datagrams = _datagrams([1300] * 12)
        targets = [direct.virtual] * 4 + [relayed.virtual] * 3 + [through_birthday.virtual] * 2
        targets += [tcp_beacon.virtual, peer.getsockname(), direct.virtual]
        framed = build_relay_frame(session, bytes(100))  # a frame made elsewhere, for the linked beacon
        sender.send_many([*zip(datagrams, targets, strict=True), (framed, ("127.0.0.1", 7))])
        assert _receive_all(peer, 6) == datagrams[:4] + datagrams[10:12]
        assert _receive_all(beacon, 3) == [build_relay_frame(session, d) for d in datagrams[4:7]]
        assert birthday == datagrams[7:9]
        assert linked == [build_relay_frame(session, datagrams[9]), framed]
        assert relayed.bytes_relayed == 3 * 1300
        if sender.gso:
            assert sender.gso_sends == 3  # the first four direct, three relay frames, the last two
        direct.use_relay(RelayLink(session, beacon.getsockname()))
        sender.send_many([(datagrams[0], direct.virtual), (datagrams[1], direct.virtual)])
        assert _receive_all(beacon, 2) == [build_relay_frame(session, d) for d in datagrams[:2]]
    finally:
        sender.close()
        peer.close()
        beacon.close()


def _reference_run_end(wire: list[tuple[bytes, tuple[str, int]]], index: int, alone: set[int]) -> int:
    """gso_run_end's rule, one datagram at a time: the next joins while it goes to the same
    address, is no longer than the first, keeps the run within the kernel's limits, and neither
    it nor the first goes alone; a shorter one ends the run."""
    first, to = wire[index]
    end, total = index + 1, len(first)
    if index in alone:
        return end
    while end < len(wire) and end not in alone and end - index < endpoint_module.GSO_MAX_SEGMENTS:
        data, addr = wire[end]
        if addr != to or len(data) > len(first) or total + len(data) > endpoint_module.GSO_MAX_BYTES:
            break
        total += len(data)
        end += 1
        if len(data) < len(first):
            break
    return end


@given(
    st.lists(
        st.tuples(st.sampled_from([1200, 1350, 1472, 1000, 60, 4000]), st.sampled_from([1, 2]), st.integers(1, 70)),
        min_size=1,
        max_size=6,
    ),
    st.sets(st.integers(0, 200), max_size=5),
    st.data(),
)
def test_gso_runs_follow_the_rule(runs: list[tuple[int, int, int]], alone: set[int], data: st.DataObject) -> None:
    # runs of equal datagrams (long ones reach the kernel's limits); equal addresses are often
    # distinct tuples, as the stack hands them over
    wire = [(bytes(size), ("192.0.2.1", port)) for size, port, count in runs for _ in range(count)]
    index = data.draw(st.integers(0, len(wire) - 1))
    assert endpoint_module.gso_run_end(wire, index, alone) == _reference_run_end(wire, index, alone)
