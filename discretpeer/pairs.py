"""A peer's pairs: one per remote peer instance met on a meeting.

An introduction (from a beacon or the LAN) or a verified probe of the other side makes a pair:
a :class:`~discretpeer.traversal.PunchSession` (probes), a
:class:`~discretpeer.pair_state.PairState` (what to dial and when) and the I/O objects that go
with them. :class:`PairDriver` feeds them: introductions, probes, the punch loop's timers, relay
requests when punching takes too long, and path switches of a verified connection (relay →
direct once a probe confirms a direct path, a NAT rebinding, a LAN path found later).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from discretpeer.addresses import Addr, routable_ipv6
from discretpeer.beacon_client import own_mapping_varies, udp_unreachable
from discretpeer.birthday_driver import BirthdayDriver
from discretpeer.candidates import is_lan_address, on_attached_network
from discretpeer.dialer import Dialer
from discretpeer.logs import get_logger
from discretpeer.pair_state import PairState
from discretpeer.proto.probe import ProbeError, ProbeKind, parse_probe
from discretpeer.proto.relay_frame import RELAY_DATA
from discretpeer.proto.wire import (
    INSTANCE_SIZE,
    MAPPING_DEPENDENT,
    MAPPING_UNKNOWN,
    Address,
    Introduction,
    Message,
    RelayRequest,
)
from discretpeer.relay_routes import RelayRoutes
from discretpeer.tasks import wait_for
from discretpeer.traversal import Candidate, CandidateKind, PunchSession, mapping_varies

if TYPE_CHECKING:
    from discretpeer.beacon_client import BeaconClient
    from discretpeer.connection import PathKind, PeerConnection, PeerProtocol
    from discretpeer.endpoint import Endpoint
    from discretpeer.meeting_book import Meeting, MeetingBook
    from discretpeer.paths import Route
    from discretpeer.peer_stats import PeerStats

log = get_logger("discretpeer.peer")

MAX_SESSIONS = 256
SESSION_LINGER = 30.0
BACKGROUND_PUNCH_INTERVAL = 1.0  # while relayed, keep looking for a direct path
RELAY_REQUEST_RETRY = 5.0
MAX_OBSERVATIONS = 8  # beacons whose view of a peer's address we keep per pair


@dataclass
class Pair:
    """A punch session, the pair's state machine, and the I/O objects that go with them."""

    meeting: Meeting
    session: PunchSession
    state: PairState
    via: str
    connection: PeerConnection | None = None
    clients: list[BeaconClient] = field(default_factory=list)  # beacons that introduced us
    relay_route: Route | None = None
    dial_task: asyncio.Task[None] | None = None
    dial_protocol: PeerProtocol | None = None
    speculation_watch: asyncio.TimerHandle | None = None
    rebind: Addr | None = None  # a new address the peer's packets came from, being probed
    # the peer's public address as each beacon that introduced it saw it (beacon -> observed)
    observed_by: dict[Addr, Addr] = field(default_factory=dict)
    # more relay sessions granted for this pair (several beacons): session id -> beacon. We send
    # through relay_route's; the other peer may have picked another one: accept its frames too
    relay_aliases: dict[bytes, Addr] = field(default_factory=dict)
    # its connection closed (e.g. a finished `pipe`): no dial, no relay request until the peer is
    # introduced again (it may be gone for good; asking the beacon for it would only be noise)
    ended: bool = False
    # the other peer's NAT mapping as it told its beacon (wire.MAPPING_*), from introductions
    remote_mapping: int | None = None
    birthday_task: asyncio.Task[None] | None = None  # hard-NAT probing (birthday_driver.py)

    def live_connection(self) -> PeerConnection | None:
        """The pair's connection, unless it closed (then the state machine learns it now)."""
        connection = self.connection
        if connection is not None and connection.closed:
            self.connection = connection = None
            self.ended = True  # (before Peer hears of the close, which then finds no connection here)
            self.state.connection_closed()
        return connection

    def remote_mapping_varies(self) -> bool | None:
        """The other peer's NAT maps per destination? (two beacons' introductions, or what it
        learned from a behaviour port); None if unknown."""
        varies = mapping_varies(self.observed_by)
        if varies is None and self.remote_mapping not in (None, MAPPING_UNKNOWN):
            varies = self.remote_mapping == MAPPING_DEPENDENT
        return varies

    @property
    def dial_heard(self) -> bool:
        """The dial in flight has received something (a speculative one is not silent)."""
        protocol = self.dial_protocol
        return protocol is not None and protocol.last_received != 0


@dataclass
class PairSettings:
    instance: bytes
    punch_duration: float
    relay_enabled: bool
    direct_enabled: bool
    relay_after: float


class PairDriver:
    """The pairs of one peer, keyed by (meeting id, remote instance), oldest first."""

    def __init__(
        self,
        settings: PairSettings,
        stats: PeerStats,
        book: MeetingBook,
        dialer: Dialer,
        clients: list[BeaconClient],
        own_candidates: Callable[[], list[Address]],
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.book = book
        self.dialer = dialer
        self.clients = clients  # the peer's beacon clients (the list grows when it starts)
        self._own_candidates = own_candidates
        self.endpoint: Endpoint | None = None  # set when the peer starts
        self.networks: list[Any] = []  # our attached networks (what "lan" means)
        self.pairs: collections.OrderedDict[tuple[bytes, bytes], Pair] = collections.OrderedDict()
        self.by_protocol: dict[PeerProtocol, Pair] = {}
        self.wake = asyncio.Event()
        self.birthday = BirthdayDriver(self)
        self.on_direct: Callable[[], None] = lambda: None  # a relayed connection moved to a direct path
        self.relay = RelayRoutes(
            stats,
            find_pair=self._find_pair,
            connected_beacons=lambda: {c.beacon_address for c in self.clients if c.connected},
            on_granted=dialer.maybe_dial,
        )

    def started(self, endpoint: Endpoint, networks: list[Any]) -> None:
        self.endpoint = self.relay.endpoint = self.dialer.endpoint = endpoint
        self.networks = networks

    def _find_pair(self, token: bytes, instance: bytes) -> Pair | None:
        meeting = self.book.by_token(token)
        return self.pairs.get((meeting.id, instance)) if meeting is not None else None

    # --- introductions and probes -------------------------------------------------------------

    def on_beacon_introduction(self, client: BeaconClient, intro: Introduction) -> None:
        self.stats.introductions += 1
        pair = self.introduce(
            intro.token,
            intro.instance,
            public=[intro.observed.to_socket()],
            local=[c.to_socket() for c in intro.candidates],
            via=f"beacon {client.spec}",
        )
        if pair is not None and intro.mapping is not None:
            pair.remote_mapping = intro.mapping
        if pair is not None and client not in pair.clients:
            pair.clients.append(client)
            # relaying already: a spare session on this beacon too (the other peer asks it as
            # well), so a relayed connection can move here if its beacon goes
            request = RelayRequest(token=pair.session.token, instance=pair.session.remote_instance)
            if pair.state.relay_requested_at is not None and self.settings.relay_enabled and client.send(request):
                self.stats.relay_requests += 1
        beacon = client.beacon_address
        if pair is not None and beacon is not None and len(pair.observed_by) < MAX_OBSERVATIONS:
            pair.observed_by[beacon] = intro.observed.to_socket()
            if self._direct_hopeless(pair):
                self.wake.set()  # the relay is due now
        if pair is not None:
            self.birthday.maybe_start(pair)

    def introduce(
        self, token: bytes, instance: bytes, *, public: list[Addr], local: list[Addr], via: str
    ) -> Pair | None:
        meeting = self.book.by_token(token)
        if meeting is None or instance == self.settings.instance or len(instance) != INSTANCE_SIZE:
            return None
        meeting.introductions += 1
        now = time.monotonic()
        pair = self._pair(meeting, token, instance, now, via)
        if pair is None:
            return None
        sends = pair.session.add_candidates(self._usable(local), CandidateKind.LOCAL, now)
        sends += pair.session.add_candidates(self._usable(public), CandidateKind.PUBLIC, now)
        if (not pair.session.active(now) or pair.ended) and pair.connection is None:
            # a new attempt for a pair we knew: punch afresh (old confirmations may be stale: the
            # NATs may have changed), relay afresh
            pair.session.extend(now, self.settings.punch_duration, interval=0.1, fast_period=1.0)
            for candidate in pair.session.candidates.values():
                candidate.confirmed_at = candidate.last_confirmed = None
            pair.state.new_attempt(now)
        pair.ended = False
        self._send_all(sends)
        self.wake.set()
        self.dialer.maybe_dial(pair)
        self.dialer.dial_speculatively(pair)
        return pair

    def _usable(self, addresses: list[Addr]) -> list[Addr]:
        ipv6 = self.endpoint is not None and ":" in self.endpoint.local_address[0]
        own = {(a.host, a.port) for a in self._own_candidates()}
        return [a for a in addresses if (ipv6 or ":" not in a[0]) and a not in own]

    def _pair(self, meeting: Meeting, token: bytes, instance: bytes, now: float, via: str) -> Pair | None:
        key = (meeting.id, instance)
        pair = self.pairs.get(key)
        if pair is not None:
            self.pairs.move_to_end(key)
            pair.meeting = meeting  # the meeting may have been withdrawn and registered again
            pair.live_connection()
            return pair
        if len(self.pairs) >= MAX_SESSIONS:
            # evict the oldest pair that is neither connected nor dialing
            for old_key, old in self.pairs.items():
                if old.connection is None and old.state.dial is None:
                    del self.pairs[old_key]
                    self.relay.drop(old)  # its relay session must not lead to a forgotten pair
                    old.state.close()
                    break
            else:
                return None
        session = PunchSession(
            token=token,
            probe_key=meeting.keys.probe_key,
            local_instance=self.settings.instance,
            remote_instance=instance,
            started_at=now,
            duration=self.settings.punch_duration,
        )
        session.start(now)
        state = PairState(is_dialer=session.is_dialer, introduced_at=now)
        state.start(now)
        pair = Pair(meeting=meeting, session=session, state=state, via=via)
        self.pairs[key] = pair
        self.stats.punch_sessions += 1
        return pair

    def on_datagram(self, data: bytes, source: Addr) -> None:
        """A datagram that is not QUIC: a relay frame or a punch probe."""
        if data[0] == RELAY_DATA:
            self.relay.on_frame(data, source)
            return
        if not self.settings.direct_enabled:
            return
        try:
            probe = parse_probe(data)
        except ProbeError:
            self.stats.probes_rejected += 1
            return
        meeting = self.book.by_token(probe.token)
        if meeting is None or probe.instance == self.settings.instance or not probe.verify(meeting.keys.probe_key):
            self.stats.probes_rejected += 1
            return
        self.stats.probes_received += 1
        now = time.monotonic()
        key = (meeting.id, probe.instance)
        pair = self.pairs.get(key)
        if pair is None:
            if probe.kind is not ProbeKind.PING:
                return
            # a probe before our own introduction: keep it, answer it, count it as one
            pair = self._pair(meeting, probe.token, probe.instance, now, "probe")
            if pair is None:
                return
        before = {c.address for c in pair.session.confirmed()}
        self._send_all(pair.session.on_probe(source, probe, now))
        if {c.address for c in pair.session.confirmed()} - before:
            self.stats.punches_confirmed += 1
        if pair.connection is not None:
            self._consider_switch(pair)
        self.dialer.maybe_dial(pair)

    def _send_all(self, sends: list[tuple[Addr, bytes]]) -> None:
        endpoint = self.endpoint
        if endpoint is None or not self.settings.direct_enabled:
            return
        for address, data in sends:
            endpoint.sendto(data, address)
            self.stats.probes_sent += 1

    async def punch_loop(self) -> None:
        while True:
            now = time.monotonic()
            deadline: float | None = None
            for key, pair in list(self.pairs.items()):
                relay_at = self._relay_housekeeping(pair, now)
                if relay_at is not None:
                    deadline = relay_at if deadline is None else min(deadline, relay_at)
                self._send_all(pair.session.poll(now))
                next_at = pair.session.next_deadline()
                if next_at is not None:
                    deadline = next_at if deadline is None else min(deadline, next_at)
                elif (
                    pair.connection is None
                    and pair.relay_route is None
                    and pair.state.dial is None
                    and now - pair.session.started_at > pair.session.duration + SESSION_LINGER
                ):
                    del self.pairs[key]
                    pair.state.close()
            self.wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self.wake.wait(), timeout)

    # --- connections --------------------------------------------------------------------------

    def attach(self, pair: Pair, connection: PeerConnection, protocol: PeerProtocol, attempt: int | None) -> None:
        """A verified connection of the pair (``attempt``: our dial's, None if accepted)."""
        pair.connection = connection
        self.by_protocol[protocol] = pair
        actions = pair.state.verified(connection.path, attempt=attempt, upgrade=self.settings.direct_enabled)
        self.dialer.run(pair, actions)
        self._consider_switch(pair)

    def connection_closed(self, connection: PeerConnection) -> Pair | None:
        """The pair whose connection this was, if it still was (its relay sessions go too)."""
        pair = self.by_protocol.pop(connection._protocol, None)  # noqa: SLF001 - our own class
        if pair is None or pair.connection is not connection:
            return None
        pair.connection = None
        pair.ended = True
        pair.state.connection_closed()
        self.relay.drop(pair)
        return pair

    def pair_for_address(self, meeting: Meeting, address: Addr) -> Pair | None:
        for (meeting_id, _), pair in reversed(self.pairs.items()):
            if meeting_id == meeting.id and address in pair.session.candidates:
                return pair
        return None

    def path_kind(self, candidate: Candidate | None, address: Addr | None = None) -> PathKind:
        """ "lan" for a peer reported as local or on one of our attached networks, else "direct"
        (so a hairpin through the router's public address is "direct")."""
        host = (candidate.address if candidate is not None else address or ("", 0))[0]
        if candidate is not None and candidate.kind is CandidateKind.LOCAL and is_lan_address(host):
            return "lan"
        # a reported global address (a port mapping, IPv6 without NAT) on another network is direct
        return "lan" if on_attached_network(host, self.networks) else "direct"

    # --- relay requests -----------------------------------------------------------------------

    def on_relay_message(self, client: BeaconClient, message: Message) -> None:
        """Relay messages from a beacon: grants and ends go to the relay routes; a RelayRequest
        is the beacon telling us the other peer asked for a relay (e.g. its UDP is blocked and
        punching is pointless): ask too, now, instead of after relay_after (issue 14)."""
        if not isinstance(message, RelayRequest):
            self.relay.on_message(client, message)
            return
        pair = self._find_pair(message.token, message.instance)
        if (
            pair is not None
            and self.settings.relay_enabled
            and pair.relay_route is None
            and pair.state.relay_requested_at is None
            and pair.live_connection() is None
        ) and client.send(RelayRequest(token=message.token, instance=message.instance)):
            pair.state.relay_requested(time.monotonic())
            self.stats.relay_requests += 1

    def _relay_housekeeping(self, pair: Pair, now: float) -> float | None:
        """Request a relay when punching has not produced a connection in time; keep punching
        slowly while relayed. Returns when it next wants to run, if it waits for something."""
        connection = pair.live_connection()
        if connection is not None:
            if connection.path == "relay" and not pair.session.active(now):
                pair.session.extend(now, 30.0, interval=BACKGROUND_PUNCH_INTERVAL, fast_period=0.0)
            return None
        settings = self.settings
        if (
            not settings.relay_enabled
            or not pair.clients
            or pair.relay_route is not None
            or not pair.meeting.wanted
            or pair.ended
        ):
            return None
        # with punching off, or both NATs mapping per destination, a direct path is hopeless: ask
        # at once (punching goes on in the background and upgrades the connection if it works)
        hopeless = not settings.direct_enabled or self._direct_hopeless(pair)
        due = pair.state.relay_due(
            now, hopeless=hopeless, relay_after=settings.relay_after, retry=RELAY_REQUEST_RETRY, heard=pair.dial_heard
        )
        if now < due:
            return due
        request = RelayRequest(token=pair.session.token, instance=pair.session.remote_instance)
        sent = sum(1 for client in pair.clients if client.send(request))
        if not sent:
            return now + 0.25  # no beacon connected (reconnecting after a crash): ask once one is
        self.stats.relay_requests += sent
        pair.state.relay_requested(now)
        log.info("requesting relay", peer_instance=pair.session.remote_instance.hex()[:8], beacons=len(pair.clients))
        return now + RELAY_REQUEST_RETRY

    def _direct_hopeless(self, pair: Pair) -> bool:
        """Both sides behind NATs that map per destination: the address each beacon reports is
        useless to the other peer, punching cannot meet. Both peers see the same facts (each
        one's address at each beacon, through introductions), so both decide alike."""
        if not self.settings.direct_enabled:
            return True
        if udp_unreachable(self.clients):  # TCP (issue 14): our UDP is blocked, punching is pointless
            return True
        other = pair.remote_mapping_varies()
        if not other:
            return False
        mine = own_mapping_varies(self.clients)
        if not mine:
            return False
        if self._ipv6_on_both_sides(pair):
            return False  # the NATs' mapping is about IPv4: over IPv6 punching can still meet
        own_ips = {c.status.observed.host for c in self.clients if c.status.observed is not None}
        # behind the same NAT as the other peer: local addresses or a hairpin may still work
        return not own_ips & {address[0] for address in pair.observed_by.values()}

    def _ipv6_on_both_sides(self, pair: Pair) -> bool:
        theirs = any(routable_ipv6(address[0]) for address in pair.session.candidates)
        return theirs and any(routable_ipv6(address.host) for address in self._own_candidates())

    # --- path switching -----------------------------------------------------------------------

    def on_unexpected_source(self, protocol: Any, source: Addr) -> None:
        """A packet of a connection came from an address its route does not use: the peer
        switched to a direct path, or its NAT gave it a new port. Probe it; switch once confirmed."""
        pair = self.by_protocol.get(protocol)
        if pair is None:
            return
        route = protocol.route
        if route is not None and route.relay is not None and source == route.relay.beacon:
            return
        pair.rebind = source
        now = time.monotonic()
        candidate = pair.session.candidates.get(source)
        if candidate is not None and candidate.last_confirmed is not None and now - candidate.last_confirmed < 2.0:
            self._consider_switch(pair)
            return
        sends = pair.session.add_candidates([source], CandidateKind.REFLEXIVE, now)
        if not pair.session.active(now):
            pair.session.extend(now, 3.0, interval=0.1, fast_period=1.0)
            self.wake.set()
        self._send_all(sends)

    def _consider_switch(self, pair: Pair) -> None:
        connection = pair.connection
        if connection is None or connection.closed:
            return
        route = connection._protocol.route  # noqa: SLF001 - our own class
        if route is None:
            return
        now = time.monotonic()
        fresh = [
            c
            for c in pair.session.confirmed()
            if c.last_confirmed is not None and now - c.last_confirmed < 10.0 and c.address not in pair.state.failed
        ]
        target: Candidate | None = None
        if route.kind == "relay":
            target = fresh[0] if fresh else None
        elif pair.rebind is not None:
            target = next((c for c in fresh if c.address == pair.rebind), None)
            on_ipv6 = route.direct is not None and ":" in route.direct[0]
            still_on_ipv6 = on_ipv6 and any(c.address == route.direct for c in fresh)
            if target is not None and still_on_ipv6 and ":" not in target.address[0]:
                target = None  # IPv4 packets still in flight (or its NAT rebound): stay on working IPv6
        else:
            # a LAN path that confirmed after we connected over the public one is the better path
            current = pair.session.candidates.get(route.direct) if route.direct is not None else None
            if current is None or current.kind is not CandidateKind.LOCAL:
                target = next((c for c in fresh if c.kind is CandidateKind.LOCAL), None)
            # an IPv6 path that confirmed after we went direct over IPv4 and ranks first (RTT within
            # 10 %: no NAT mapping to keep alive); never back to IPv4 while IPv6 works (no flapping)
            if target is None and fresh and ":" in fresh[0].address[0] and ":" not in (route.direct or ("::",))[0]:
                target = fresh[0]
        if target is None:
            return
        pair.rebind = None
        was_relayed = route.kind == "relay"
        if route.use_direct(target.address):
            self.stats.path_switches += 1
            connection._set_path(self.path_kind(target))  # noqa: SLF001 - our own connection class
            pair.state.switched(connection.path)
            log.info("path switched", peer=connection.peer_id, path=connection.path, remote=target.address)
            if was_relayed:
                self.on_direct()
