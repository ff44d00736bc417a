"""Relay sessions of a peer's pairs: grants, ends, beacons lost, relay frames.

A beacon grants a relay session to both peers of a pair; each peer's pair then gets a route
through it (:class:`~discretpeer.paths.Route`, relay kind), and relay frames carrying that
session's id go into the endpoint as QUIC datagrams of the route. When several beacons grant,
the first grant is the route and the others are kept as spares ("aliases"): the other peer may
send through any of them, and a relayed connection moves to one when its beacon goes.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from discretpeer.addresses import Addr
from discretpeer.logs import get_logger
from discretpeer.paths import RelayLink, Route
from discretpeer.proto.relay_frame import (
    MAX_RELAY_PAYLOAD,
    RELAY_DATA,
    RELAY_HEADER_SIZE,
    RelayFrameError,
    parse_relay_frame,
)
from discretpeer.proto.wire import ErrorCode, Message, RelayEnd, RelayGrant

if TYPE_CHECKING:
    from discretpeer.beacon_client import BeaconClient
    from discretpeer.endpoint import Endpoint
    from discretpeer.pairs import Pair
    from discretpeer.peer_stats import PeerStats

log = get_logger("discretpeer.peer")

MAX_RELAY_ROUTES = 64
MAX_RELAY_ALIASES = 8  # spare sessions (other beacons' grants) kept per pair
# The beacon grants a session to both peers at once, and the dialer may send through it before
# the other peer has read its grant (a grant can be retransmitted; on a fast path the frames race
# it). Dropped, the dialer's Initial comes again only after a probe timeout (measured on loopback:
# connected in 0.74 s instead of 0.46; a path of unknown RTT waits ~1 s). So a few such frames
# are held until the grant.
EARLY_FRAMES = 16
EARLY_FRAME_SECONDS = 2.0


class RelayRoutes:
    """Session id → (route, pair), and spare session id → pair."""

    def __init__(
        self,
        stats: PeerStats,
        *,
        find_pair: Callable[[bytes, bytes], Pair | None],
        connected_beacons: Callable[[], set[Addr | None]],
        on_granted: Callable[[Pair], None],
    ) -> None:
        self.stats = stats
        self.endpoint: Endpoint | None = None  # set when the peer starts
        self._find_pair = find_pair  # (token, instance) -> the pair, if we know it
        self._connected_beacons = connected_beacons
        self._on_granted = on_granted  # a pair got its relay route: it may dial through it
        self._relay_routes: dict[bytes, tuple[Route, Pair]] = {}
        self._relay_aliases: dict[bytes, Pair] = {}
        # (arrival, session id, payload, source): frames of no known session from a beacon we
        # are connected to, the oldest dropped first
        self._early: collections.deque[tuple[float, bytes, bytes, Addr]] = collections.deque(maxlen=EARLY_FRAMES)

    def pair_of(self, session_id: bytes) -> Pair | None:
        entry = self._relay_routes.get(session_id)
        return entry[1] if entry is not None else None

    def routes(self) -> list[tuple[Route, Pair]]:
        return list(self._relay_routes.values())

    def on_message(self, client: BeaconClient, message: Message) -> None:
        if isinstance(message, RelayGrant):
            self.stats.relay_grants += 1
            pair = self._find_pair(message.token, message.instance)
            beacon = client.beacon_address
            if pair is None or beacon is None or self.endpoint is None:
                return
            if pair.relay_route is not None:
                # a second beacon granted too; the other peer may send through that one
                if len(pair.relay_aliases) < MAX_RELAY_ALIASES and len(self._relay_aliases) < MAX_RELAY_ROUTES:
                    pair.relay_aliases[message.session_id] = beacon
                    self._relay_aliases[message.session_id] = pair
                    self._let_in_early(message.session_id, beacon, pair.relay_route)
                return
            if pair.connection is not None and not pair.connection.closed:
                return  # a direct path won meanwhile
            if len(self._relay_routes) >= MAX_RELAY_ROUTES:
                return
            route = self.endpoint.routes.new(relay=RelayLink(message.session_id, beacon))
            pair.relay_route = route
            self._relay_routes[message.session_id] = (route, pair)
            log.info("relay granted", beacon=str(client.spec), max_bytes=message.max_bytes)
            self._on_granted(pair)
            self._let_in_early(message.session_id, beacon, route)
        elif isinstance(message, RelayEnd):
            self.stats.relay_ends += 1
            entry = self._relay_routes.get(message.session_id)
            if entry is None:
                return
            route, pair = entry
            try:
                code = ErrorCode(message.code).name
            except ValueError:
                code = str(message.code)
            text = f"relay ended by the beacon: {code} {message.message}".strip()
            pair.meeting.failures.append(text)
            connection = pair.connection
            self.drop(pair)
            if connection is not None and connection.path == "relay":
                connection.close(text)

    def on_beacon_lost(self, client: BeaconClient, address: Addr) -> None:
        """Relay sessions live in the beacon: when it goes, a relayed connection moves to the
        session another beacon granted for the pair, if any (streams survive); else it ends now
        (the app sees an error at once, not after QUIC's idle timeout). Direct ones carry on."""
        for session_id, pair in list(self._relay_aliases.items()):
            if pair.relay_aliases.get(session_id) == address:  # a spare on the lost beacon
                del pair.relay_aliases[session_id]
                del self._relay_aliases[session_id]
        for route, pair in list(self._relay_routes.values()):
            if route.relay is None or route.relay.beacon != address:
                continue
            connection = pair.connection
            if connection is not None and not connection.closed and self._move(pair, route):
                log.info("relay moved", peer=connection.peer_id, lost=str(client.spec), beacon=route.relay.beacon)
                continue
            self.drop(pair)
            pair.state.relay_requested_at = None  # ask afresh as soon as a beacon is back
            text = f"relay lost: beacon {client.spec} disconnected"
            pair.meeting.failures.append(text)
            if connection is not None and connection.path == "relay":
                connection.close(text)

    def _move(self, pair: Pair, route: Route) -> bool:
        """Send through a spare session of the pair (granted by a beacon still connected)."""
        assert route.relay is not None
        connected = self._connected_beacons()
        for session_id, beacon in list(pair.relay_aliases.items()):
            if beacon not in connected:
                continue
            del pair.relay_aliases[session_id]
            self._relay_aliases.pop(session_id, None)
            self._relay_routes.pop(route.relay.session_id, None)
            route.use_relay(RelayLink(session_id, beacon))
            self._relay_routes[session_id] = (route, pair)
            if pair.connection is not None:
                pair.connection._set_path()  # noqa: SLF001 - still "relay": reports the change
            self.stats.path_switches += 1
            return True
        return False

    def drop(self, pair: Pair) -> None:
        """Forget the pair's relay sessions (its route goes unless a live connection uses it)."""
        route = pair.relay_route
        pair.relay_route = None
        for session_id in pair.relay_aliases:
            self._relay_aliases.pop(session_id, None)
        pair.relay_aliases.clear()
        if route is not None and route.relay is not None:
            self._relay_routes.pop(route.relay.session_id, None)
            if self.endpoint is not None and (pair.connection is None or pair.connection.closed):
                self.endpoint.routes.drop(route)

    def on_frames(self, data: bytes, segment: int, source: Addr) -> bool:
        """Relay frames of ``segment`` bytes (the last may be shorter) that the kernel coalesced
        into one read (GRO): when all are of one session with a route, from the beacon that
        granted it, their payloads go into the endpoint together (one look-up instead of one per
        frame). False: nothing done; the caller hands each frame to :meth:`on_frame`."""
        endpoint = self.endpoint
        if endpoint is None or not RELAY_HEADER_SIZE < segment <= RELAY_HEADER_SIZE + MAX_RELAY_PAYLOAD:
            return False
        header = data[:RELAY_HEADER_SIZE]
        entry = self._relay_routes.get(header[1:])
        if header[0] != RELAY_DATA or entry is None:
            return False  # another session (an alias, or none): frame by frame
        route = entry[0]
        if route.relay is None or source != route.relay.beacon:
            return False
        size = len(data)
        if (size - 1) % segment < RELAY_HEADER_SIZE:  # the last frame carries nothing
            return False
        payloads = []
        for offset in range(0, size, segment):
            if data[offset : offset + RELAY_HEADER_SIZE] != header:
                return False
            payloads.append(data[offset + RELAY_HEADER_SIZE : offset + segment])
        endpoint.inject_many(payloads, route)
        return True

    def on_frame(self, data: bytes, source: Addr) -> None:
        try:
            session_id, payload = parse_relay_frame(data)
        except RelayFrameError:
            self.stats.probes_rejected += 1
            return
        entry = self._relay_routes.get(session_id)
        if entry is None:
            pair = self._relay_aliases.get(session_id)
            if pair is not None and pair.relay_route is not None and pair.relay_aliases.get(session_id) == source:
                entry = (pair.relay_route, pair)
                source = pair.relay_route.relay.beacon if pair.relay_route.relay is not None else source
        if entry is None:
            if self.endpoint is not None and source in self._connected_beacons():
                self._early.append((time.monotonic(), session_id, payload, source))
                self.stats.relay_frames_early += 1
            return
        if self.endpoint is None:
            return
        route, _ = entry
        if route.relay is None or source != route.relay.beacon:
            return  # only the beacon that granted the session may deliver for it
        self.endpoint.inject(payload, route)

    def _let_in_early(self, session_id: bytes, beacon: Addr, route: Route | None) -> None:
        """The frames of ``session_id`` held before its grant, from the beacon that granted it
        and not older than EARLY_FRAME_SECONDS, go in through ``route``, in arrival order."""
        if not self._early or route is None or self.endpoint is None:
            return
        oldest = time.monotonic() - EARLY_FRAME_SECONDS
        held = [frame for frame in self._early if frame[1] == session_id]
        if not held:
            return
        self._early = collections.deque((frame for frame in self._early if frame[1] != session_id), maxlen=EARLY_FRAMES)
        for arrival, _, payload, source in held:
            if source == beacon and arrival >= oldest:
                self.stats.relay_frames_replayed += 1
                self.endpoint.inject(payload, route)
