"""Path-MTU probing inside QUIC, sans I/O: two real aioquic connections joined by an in-memory
path that carries datagrams up to a given size and silently drops larger ones."""

from __future__ import annotations

import ssl

import pytest
from aioquic.quic.configuration import QuicConfiguration
from hypothesis import given
from hypothesis import strategies as st

from certs import create_bundle
from discretpeer.path_mtu import (
    AIOQUIC_MAX_DATAGRAM,
    MAX_PROBES,
    DatagramSizeSearch,
    SizedQuicConfiguration,
    check_max_datagram_size,
    probe_sizes,
)

CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)


def pair(cap: int | None = None) -> tuple[DatagramSizeSearch, DatagramSizeSearch]:
    bundle = create_bundle()
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["t"], max_datagram_size=1350)
    server_config.certificate = bundle.certificate
    server_config.private_key = bundle.private_key
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=["t"], verify_mode=ssl.CERT_NONE, max_datagram_size=1350
    )
    if cap is not None:
        client_config = SizedQuicConfiguration(
            is_client=True,
            alpn_protocols=["t"],
            verify_mode=ssl.CERT_NONE,
            max_datagram_size=1350,
            datagram_size_cap=cap,
        )
    client = DatagramSizeSearch(configuration=client_config)
    server = DatagramSizeSearch(
        configuration=server_config, original_destination_connection_id=client.original_destination_connection_id
    )
    client.connect(SERVER_ADDR, now=0.0)
    return client, server


class Path:
    """Carries datagrams up to ``mtu`` bytes both ways; counts what it dropped."""

    def __init__(self, client: DatagramSizeSearch, server: DatagramSizeSearch, mtu: int) -> None:
        self.client, self.server, self.mtu = client, server, mtu
        self.now = 0.0
        self.largest = 0
        self.dropped: list[int] = []

    def run(self, seconds: float, step: float = 0.002) -> None:
        end = self.now + seconds
        while self.now < end:
            moved = True
            while moved:
                moved = False
                for sender, receiver, addr in (
                    (self.client, self.server, CLIENT_ADDR),
                    (self.server, self.client, SERVER_ADDR),
                ):
                    for data, _ in sender.datagrams_to_send(self.now):
                        moved = True
                        if len(data) > self.mtu:
                            self.dropped.append(len(data))
                            continue
                        self.largest = max(self.largest, len(data))
                        receiver.receive_datagram(data, addr, now=self.now)
            self.now += step
            for quic in (self.client, self.server):
                timer = quic.get_timer()
                if timer is not None and timer <= self.now:
                    quic.handle_timer(self.now)


def connected(mtu: int, cap: int | None = None) -> Path:
    client, server = pair(cap)
    path = Path(client, server, mtu)
    path.run(0.5)
    assert client._handshake_confirmed and server._handshake_complete
    return path


def test_the_largest_size_the_path_carries_is_found_and_used():
    path = connected(mtu=1472)
    path.client.search_datagram_size([16000, 1472, 1452])
    path.run(2.0)
    assert path.client.datagram_size == 1472
    assert path.dropped == [16000] * MAX_PROBES  # the probes, lost; nothing else was too large
    assert path.client.size_probes_lost == MAX_PROBES and not path.client.searching
    # data now travels in 1472-byte datagrams
    path.client.send_stream_data(0, bytes(200_000), end_stream=True)
    path.run(1.0)
    assert path.largest == 1472 and path.dropped == [16000] * MAX_PROBES
    assert path.server.datagram_size == 1350  # each direction probes for itself


@pytest.mark.parametrize(
    ("cap", "expected", "probed"),
    [
        (1472, 1472, [1472]),  # a path of 16,000 bytes, but the cap is what is probed and used
        (1400, 1400, [1400]),  # a cap between the candidate sizes is itself probed
        (1350, 1350, []),  # the cap is the base size: no probe at all
    ],
)
def test_the_configured_cap_bounds_the_search(cap, expected, probed):
    path = connected(mtu=65536, cap=cap)
    assert path.client.datagram_size_cap == cap
    sent_before = path.client.size_probes_sent
    path.client.search_datagram_size([16000, 1472, 1452])
    path.run(2.0)
    assert path.client.datagram_size == expected
    assert (path.client.size_probes_sent > sent_before) == bool(probed) and not path.client.searching
    assert path.largest == expected  # no probe above the cap, though the path carries 16,000
    path.client.send_stream_data(0, bytes(200_000), end_stream=True)
    path.run(1.0)
    assert path.largest == expected  # the data goes at the cap
    assert path.server.datagram_size_cap == AIOQUIC_MAX_DATAGRAM  # a plain configuration: no cap


@pytest.mark.parametrize("bad", [0, 1199, 16001, 1472.0, "1472", True, None])
def test_an_unusable_maximum_datagram_size_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="max_datagram_size"):
        check_max_datagram_size(bad)


@given(st.integers(min_value=1200, max_value=16000))
def test_every_usable_maximum_datagram_size_is_accepted(value):
    assert check_max_datagram_size(value) == value


def test_nothing_larger_than_the_base_gets_through_so_the_base_stays():
    path = connected(mtu=1400)
    path.client.search_datagram_size([16000, 1472, 1452])
    path.run(3.0)
    assert path.client.datagram_size == 1350
    assert sorted(set(path.dropped)) == [1452, 1472, 16000]
    assert len(path.dropped) == 3 * MAX_PROBES
    assert not path.client.searching
    path.client.send_stream_data(0, bytes(100_000), end_stream=True)
    path.run(1.0)
    assert len(path.dropped) == 3 * MAX_PROBES  # the connection works on at the base size


def test_a_lost_probe_does_not_shrink_the_congestion_window():
    path = connected(mtu=1500)
    window = path.client._loss.congestion_window
    path.client.search_datagram_size([16000])
    path.run(2.0)
    assert path.dropped == [16000] * MAX_PROBES and path.client.size_probes_lost == MAX_PROBES
    assert path.client._loss.congestion_window >= window


def test_reset_goes_back_to_the_base_and_a_probe_in_flight_no_longer_counts():
    path = connected(mtu=20000)
    path.client.search_datagram_size([16000])
    path.run(1.0)
    assert path.client.datagram_size == 16000
    path.client.reset_datagram_size()
    assert path.client.datagram_size == 1350
    # a search, then a reset before the acknowledgement arrives: the ACK must not raise the size
    path.client.search_datagram_size([16000])
    for data, _ in path.client.datagrams_to_send(path.now):
        path.server.receive_datagram(data, CLIENT_ADDR, now=path.now)
    path.client.reset_datagram_size()
    path.run(1.0)
    assert path.client.datagram_size == 1350


@pytest.mark.parametrize(
    ("address", "mtu", "expected"),
    [
        (("127.0.0.1", 1), 65536, [AIOQUIC_MAX_DATAGRAM, 1472, 1452]),
        (("192.0.2.1", 1), 1500, [1472, 1452]),
        (("2001:db8::1", 1), 1500, [1452]),
        (("::ffff:192.0.2.1", 1), 1500, [1472, 1452]),
        (("192.0.2.1", 1), 1400, [1372]),
        (("192.0.2.1", 1), 1378, []),
        (("not an address", 1), 1500, []),
    ],
)
def test_probe_sizes_follow_the_route_mtu(address, mtu, expected):
    assert probe_sizes(address, 1350, mtu=mtu) == expected


@given(st.integers(min_value=0, max_value=1 << 20), st.integers(min_value=1200, max_value=20000))
def test_probe_sizes_are_bounded_and_ordered(mtu, base):
    sizes = probe_sizes(("192.0.2.1", 1), base, mtu=mtu)
    assert sizes == sorted(sizes, reverse=True)
    assert all(base < s <= min(mtu - 28, AIOQUIC_MAX_DATAGRAM) for s in sizes)


def test_probe_sizes_through_a_relay_leave_room_for_the_frame_header():
    assert probe_sizes(("127.0.0.1", 1), 1350, mtu=65536, overhead=9) == [AIOQUIC_MAX_DATAGRAM, 1463, 1443]
    assert probe_sizes(("192.0.2.1", 1), 1350, mtu=1500, overhead=9) == [1463, 1443]


def test_route_mtu_of_loopback_is_known():
    assert probe_sizes(("127.0.0.1", 9), 1350)[0] == AIOQUIC_MAX_DATAGRAM


def test_a_smaller_limit_learnt_during_the_search_is_honoured():
    """The kernel's path MTU drops while searching (ICMP after our first probe): sizes above it
    would leave as fragments, so they are not probed; the limit itself is."""
    path = connected(mtu=1400)
    limit = [None]
    path.client.size_limit = lambda: limit[0]
    path.client.search_datagram_size([1472, 1452])
    for data, _ in path.client.datagrams_to_send(path.now):  # the first probe: 1472, lost
        assert len(data) == 1472
    limit[0] = 1372  # what the kernel says after "fragmentation needed, MTU 1400"
    path.run(3.0)
    assert path.client.datagram_size == 1372
    assert path.dropped == []  # nothing above the limit was sent after it was known
