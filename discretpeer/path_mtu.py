"""Larger datagrams where the path carries them: path-MTU probing inside QUIC (RFC 8899 style).

Peer connections start with 1350-byte datagrams, which cross any Internet path. Once a direct
path is verified, the sender probes larger sizes with a QUIC packet of exactly that size (a PING
padded with PADDING frames, encrypted like any other packet, so nobody on the path can fake its
acknowledgement). The first size the peer acknowledges becomes the size of every packet sent;
a lost probe only means "try the next size". On loopback that is 16,000 bytes (aioquic's
ceiling, see :data:`AIOQUIC_MAX_DATAGRAM`) and moves ~7x more data per CPU-second; on Ethernet
1472 (IPv4) or 1452 (IPv6).

Care taken:

- sizes are capped by the kernel's MTU for the route to the peer (:func:`route_mtu`), so a probe
  is never fragmented by our own host (a fragmented probe could get through and confirm a size
  whose packets then travel as fragments); above that, routers drop it (the kernel sets DF
  below the route MTU) and it is simply lost;
- a probe does not count as in flight: its loss is no congestion signal; a size is given up
  after :data:`MAX_PROBES` lost probes (aioquic reports a PTO retransmission as a loss too);
- one probe at a time; every route change (new address, relay) goes back to the base size and a
  new search, since the confirmed size belonged to the old path;
- through a relay the probe crosses both legs (peer to beacon, beacon to peer) inside a relay
  frame; the cap is the route to the beacon, minus the frame's header;
- each direction probes for itself (paths may be asymmetric).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet_builder import QuicDeliveryState

from discretpeer._aioquic import MAX_DATAGRAM_SIZE, SizeProbe, SizeProbing
from discretpeer.addresses import Addr, unmap_ip
from discretpeer.tuning import DEFAULT_TUNING, Tuning

AIOQUIC_MAX_DATAGRAM = MAX_DATAGRAM_SIZE  # aioquic writes STREAM/CRYPTO lengths as 2-byte varints (< 16384)
MAX_PROBES = 3  # probes of one size lost before the search moves on to the next size
BASE_DATAGRAM = 1350  # what every peer connection starts with: crosses any Internet path
MIN_DATAGRAM = 1200  # QUIC's minimum (RFC 9000 section 14)
ETHERNET_SIZES = (1472, 1452)  # 1500-byte MTU minus IPv4/UDP (28) and IPv6/UDP (48) headers
_IP_MTU = getattr(socket, "IP_MTU", 14)  # Linux values; Python 3.11 lacks the names
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return unmap_ip(address)


def route_mtu(address: Addr) -> int | None:
    """The kernel's MTU for the route to ``address`` (interface MTU, or a smaller path MTU it
    learnt from ICMP); None if unknown. Sends nothing: connect() on a UDP socket only routes."""
    ip = _ip(address[0])
    if ip is None:
        return None
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), address[1] or 9))
            level, option = (socket.IPPROTO_IP, _IP_MTU) if ip.version == 4 else (socket.IPPROTO_IPV6, _IPV6_MTU)
            return int(sock.getsockopt(level, option))
    except OSError:
        return None


def datagram_limit(address: Addr | None, mtu: int | None = None, overhead: int = 0) -> int | None:
    """The largest QUIC datagram the route to ``address`` takes without fragmenting, by the
    kernel's MTU for it (``mtu`` if already known); ``overhead``: bytes each datagram carries
    besides the QUIC packet (a relay frame's header). None if unknown."""
    if address is None:
        return None
    ip = _ip(address[0])
    if ip is None:
        return None
    if mtu is None:
        mtu = route_mtu(address)
    if mtu is None:
        return None
    return min(mtu - (28 if ip.version == 4 else 48), AIOQUIC_MAX_DATAGRAM + overhead) - overhead


def probe_sizes(address: Addr | None, base: int, mtu: int | None = None, overhead: int = 0) -> list[int]:
    """QUIC datagram sizes worth probing towards ``address`` (largest first), above ``base``.
    ``mtu``: the route's MTU if already known (else asked from the kernel); ``overhead``: bytes
    each datagram carries besides the QUIC packet (a relay frame's header)."""
    limit = datagram_limit(address, mtu, overhead)
    if limit is None:
        return []
    sizes = {limit, *(size - overhead for size in ETHERNET_SIZES if size - overhead < limit)}
    return sorted((size for size in sizes if size > base), reverse=True)


def check_max_datagram_size(value: int) -> int:
    """``value`` if it is a usable maximum datagram size (1200..16000), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_DATAGRAM <= value <= AIOQUIC_MAX_DATAGRAM:
        raise ValueError(
            f"max_datagram_size must be an integer from {MIN_DATAGRAM} to {AIOQUIC_MAX_DATAGRAM}, got {value!r}"
        )
    return value


@dataclass
class SizedQuicConfiguration(QuicConfiguration):
    """A QuicConfiguration that also carries ``datagram_size_cap``: the largest datagram
    path-MTU probing may settle on (``max_datagram_size`` stays the size a connection starts with),
    and the :class:`discretpeer.tuning.Tuning` its connections read when they are set up."""

    datagram_size_cap: int = AIOQUIC_MAX_DATAGRAM
    tuning: Tuning = DEFAULT_TUNING


class DatagramSizeSearch(SizeProbing):
    """A QuicConnection that can probe for, and then use, larger datagrams.

    Call :meth:`search_datagram_size` once a path is verified (then transmit), and
    :meth:`reset_datagram_size` when the path changes. The probes themselves are written by
    :class:`discretpeer._aioquic.SizeProbing`; this class decides which size, and when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_datagram_size = self.datagram_size
        # the largest size a search may settle on (Peer(max_datagram_size=...))
        self.datagram_size_cap: int = getattr(self.configuration, "datagram_size_cap", AIOQUIC_MAX_DATAGRAM)
        self.size_probes_sent = 0
        self.size_probes_lost = 0
        self._sizes_to_probe: list[int] = []
        self._probe_in_flight: SizeProbe | None = None
        self._losses: dict[int, int] = {}  # size -> probes of that size lost in this search
        # asked before each probe: the largest datagram the route takes now (the kernel lowers
        # its path MTU on ICMP "fragmentation needed", e.g. after our own probe hit a router)
        self.size_limit: Callable[[], int | None] | None = None

    @property
    def searching(self) -> bool:
        return bool(self._sizes_to_probe) or self._probe_in_flight is not None

    def search_datagram_size(self, sizes: Iterable[int]) -> None:
        """Probe ``sizes`` (largest first); the first one acknowledged becomes the datagram size.
        Replaces any search in progress (a probe still in flight no longer counts)."""
        current = self.datagram_size
        cap = min(self.datagram_size_cap, AIOQUIC_MAX_DATAGRAM)
        wanted = {s for s in sizes if current < s <= AIOQUIC_MAX_DATAGRAM}
        if any(s > cap for s in wanted) and cap > current:
            wanted.add(cap)  # the path takes more than the cap: probe the cap itself
        self._sizes_to_probe = sorted({s for s in wanted if s <= cap}, reverse=True)
        self._probe_in_flight = None
        self._losses = {}

    def reset_datagram_size(self) -> None:
        """Back to the base size, no search: the path changed."""
        self._sizes_to_probe = []
        self._probe_in_flight = None
        if self.datagram_size != self.base_datagram_size:
            self.set_datagram_size(self.base_datagram_size)

    # --- the probes (SizeProbing's hooks) -----------------------------------------------------

    def next_probe_size(self) -> int | None:
        if not self._sizes_to_probe or self._probe_in_flight is not None:
            return None
        if not self.ready_to_probe():
            return None
        if self.size_limit is not None:
            limit = self.size_limit()
            if limit is not None and limit < self._sizes_to_probe[0]:
                # bigger ones would leave our host as fragments: probe what fits, nothing larger
                fits = {s for s in self._sizes_to_probe if s <= limit}
                if limit > self.datagram_size:
                    fits.add(limit)
                self._sizes_to_probe = sorted(fits, reverse=True)
                if not self._sizes_to_probe:
                    return None
        return self._sizes_to_probe[0]

    def size_probe_sent(self, probe: SizeProbe, full: bool) -> None:
        self.size_probes_sent += 1
        if full:
            self._probe_in_flight = probe
        else:  # could not be padded to the full size: its acknowledgement proves nothing
            self._sizes_to_probe = []

    def size_probe_delivered(self, delivery: QuicDeliveryState, probe: SizeProbe) -> None:
        if probe is not self._probe_in_flight:
            return  # superseded by a reset or a new search
        self._probe_in_flight = None
        if delivery == QuicDeliveryState.ACKED:
            self._sizes_to_probe = []
            if probe.size > self.datagram_size:
                self.set_datagram_size(probe.size)
        else:
            # aioquic also reports a packet as lost when a PTO retransmits it early: give every
            # size MAX_PROBES chances before moving on to the next (RFC 8899's MAX_PROBES)
            self.size_probes_lost += 1
            self._losses[probe.size] = self._losses.get(probe.size, 0) + 1
            if self._losses[probe.size] >= MAX_PROBES:
                self._sizes_to_probe = [s for s in self._sizes_to_probe if s < probe.size]
