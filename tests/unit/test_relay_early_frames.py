"""RelayRoutes holds relay frames of a session not granted yet (the other peer dialled through its
grant before ours arrived) and lets them in when that session is granted, from the beacon that
granted it: bounded, only from beacons we are connected to, never older than EARLY_FRAME_SECONDS."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import discretpeer.relay_routes as relay_routes_module
from discretpeer.paths import RouteTable
from discretpeer.peer_stats import PeerStats
from discretpeer.proto.relay_frame import build_relay_frame
from discretpeer.proto.wire import RelayGrant
from discretpeer.relay_routes import EARLY_FRAME_SECONDS, EARLY_FRAMES, RelayRoutes

BEACON = ("198.51.100.7", 4264)  # documentation addresses, never sent to
OTHER_BEACON = ("198.51.100.9", 4264)
STRANGER = ("203.0.113.66", 5000)
SESSION = bytes(range(1, 9))
OTHER = bytes(range(11, 19))
TOKEN, INSTANCE = b"t" * 16, b"i" * 8


class _Endpoint:
    """What RelayRoutes calls of an Endpoint: its route table, and inject (recorded)."""

    def __init__(self) -> None:
        self.routes = RouteTable()
        self.injected: list[tuple[bytes, Any]] = []

    def inject(self, payload: bytes, route: Any) -> None:
        self.injected.append((payload, route))


def _relay(connected: set = frozenset({BEACON, OTHER_BEACON})) -> tuple[RelayRoutes, _Endpoint, Any, list]:
    pair = SimpleNamespace(relay_route=None, connection=None, relay_aliases={})
    granted: list = []
    routes = RelayRoutes(
        PeerStats(),
        find_pair=lambda token, instance: pair if (token, instance) == (TOKEN, INSTANCE) else None,
        connected_beacons=lambda: set(connected),
        on_granted=granted.append,
    )
    endpoint = _Endpoint()
    routes.endpoint = endpoint  # type: ignore[assignment]  # what RelayRoutes calls of an Endpoint
    return routes, endpoint, pair, granted


def _grant(routes: RelayRoutes, session: bytes = SESSION, beacon: tuple = BEACON) -> None:
    client = SimpleNamespace(beacon_address=beacon, spec=f"{beacon[0]}:{beacon[1]}")
    grant = RelayGrant(token=TOKEN, instance=INSTANCE, session_id=session, max_bytes=1 << 20, max_seconds=60,
                       rate_bytes_per_second=1 << 20)  # fmt: skip
    routes.on_message(client, grant)  # type: ignore[arg-type]  # what on_message reads of a BeaconClient


def test_frames_before_the_grant_go_in_at_the_grant_in_order() -> None:
    routes, endpoint, pair, granted = _relay()
    payloads = [bytes([0xC0 + i]) * 1200 for i in range(3)]
    for payload in payloads:
        routes.on_frame(build_relay_frame(SESSION, payload), BEACON)
    assert endpoint.injected == [] and routes.stats.relay_frames_early == 3
    _grant(routes)
    assert granted == [pair] and pair.relay_route is not None
    assert endpoint.injected == [(p, pair.relay_route) for p in payloads]
    assert routes.stats.relay_frames_replayed == 3
    # once in, they are gone: a second grant (another beacon's, an alias) lets nothing in twice
    _grant(routes, OTHER, OTHER_BEACON)
    assert len(endpoint.injected) == 3
    # and after the grant, frames go straight in
    routes.on_frame(build_relay_frame(SESSION, b"\xc9" * 100), BEACON)
    assert endpoint.injected[-1] == (b"\xc9" * 100, pair.relay_route)


def test_what_is_never_let_in() -> None:
    routes, endpoint, pair, _ = _relay(connected={BEACON, OTHER_BEACON})
    routes.on_frame(build_relay_frame(SESSION, b"\xc1" * 50), STRANGER)  # not a beacon of ours: not even held
    assert routes.stats.relay_frames_early == 0
    routes.on_frame(build_relay_frame(SESSION, b"\xc2" * 50), OTHER_BEACON)  # held, but another beacon grants
    routes.on_frame(build_relay_frame(OTHER, b"\xc3" * 50), BEACON)  # held, another session
    _grant(routes)
    assert endpoint.injected == [] and routes.stats.relay_frames_replayed == 0


def test_frames_older_than_the_limit_are_not_let_in(monkeypatch) -> None:
    routes, endpoint, pair, _ = _relay()
    now = [1000.0]
    monkeypatch.setattr(relay_routes_module.time, "monotonic", lambda: now[0])
    routes.on_frame(build_relay_frame(SESSION, b"\xc1" * 50), BEACON)
    now[0] += EARLY_FRAME_SECONDS + 0.01
    routes.on_frame(build_relay_frame(SESSION, b"\xc2" * 50), BEACON)
    _grant(routes)
    assert endpoint.injected == [(b"\xc2" * 50, pair.relay_route)]


def test_a_flood_of_frames_for_no_session_holds_at_most_the_bound() -> None:
    routes, endpoint, pair, _ = _relay()
    for i in range(10_000):
        routes.on_frame(build_relay_frame(i.to_bytes(8, "big"), b"\xc0" * 1200), BEACON)
    assert len(routes._early) == EARLY_FRAMES
    routes.on_frame(build_relay_frame(SESSION, b"\xc5" * 1200), BEACON)  # the legitimate one, last
    _grant(routes)
    assert endpoint.injected == [(b"\xc5" * 1200, pair.relay_route)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([SESSION, OTHER]),
            st.sampled_from([BEACON, OTHER_BEACON, STRANGER]),
            st.binary(min_size=1, max_size=40),
        ),  # empty: the parser refuses it
        max_size=40,
    )
)
def test_what_goes_in_is_the_granted_sessions_frames_from_its_beacon_among_the_last_held(frames) -> None:
    routes, endpoint, pair, _ = _relay()
    for session, source, payload in frames:
        routes.on_frame(build_relay_frame(session, payload), source)
    _grant(routes)
    held = [f for f in frames if f[1] != STRANGER][-EARLY_FRAMES:]
    expected = [payload for session, source, payload in held if session == SESSION and source == BEACON]
    assert [payload for payload, _ in endpoint.injected] == expected
    assert all(route is pair.relay_route for _, route in endpoint.injected)
