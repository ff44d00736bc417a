"""RelayRoutes.on_frames: relay frames the kernel coalesced into one read (GRO) go into the
endpoint together only when all are of one session with a route, from the beacon that granted it;
anything else is left to the frame-by-frame path (on_frame), which drops what is not ours."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from discretpeer.paths import RelayLink, RouteTable
from discretpeer.peer_stats import PeerStats
from discretpeer.proto.relay_frame import (
    MAX_RELAY_PAYLOAD,
    RELAY_HEADER_SIZE,
    RelayFrameError,
    build_relay_frame,
    parse_relay_frame,
)
from discretpeer.relay_routes import RelayRoutes

BEACON = ("198.51.100.7", 4264)  # documentation address, never sent to
SESSION = bytes(range(1, 9))
OTHER = bytes(range(11, 19))


class _Endpoint:
    def __init__(self) -> None:
        self.injected: list[tuple[list[bytes], Any]] = []

    def inject_many(self, datagrams: list[bytes], route: Any) -> None:
        self.injected.append((datagrams, route))


def _relay() -> tuple[RelayRoutes, _Endpoint, Any]:
    routes = RelayRoutes(PeerStats(), find_pair=lambda t, i: None, connected_beacons=set, on_granted=lambda p: None)
    endpoint = _Endpoint()
    routes.endpoint = endpoint  # type: ignore[assignment]  # what on_frames calls of an Endpoint
    route = RouteTable().new(relay=RelayLink(SESSION, BEACON))
    routes._relay_routes[SESSION] = (route, object())  # type: ignore[assignment]  # as a grant leaves it
    return routes, endpoint, route


def _run(payloads: list[bytes], session: bytes = SESSION) -> tuple[bytes, int]:
    frames = [build_relay_frame(session, p) for p in payloads]
    return b"".join(frames), len(frames[0])


def test_one_sessions_run_goes_in_together_and_the_last_may_be_shorter() -> None:
    routes, endpoint, route = _relay()
    payloads = [bytes([0x40 + i]) * 1200 for i in range(5)] + [b"\x45" * 300]
    data, segment = _run(payloads)
    assert routes.on_frames(data, segment, BEACON)
    assert endpoint.injected == [(payloads, route)]


def test_anything_else_is_left_to_the_frame_by_frame_path() -> None:
    routes, endpoint, _ = _relay()
    good = [b"\x41" * 1200] * 3
    data, segment = _run(good)
    mixed = data[:segment] + build_relay_frame(OTHER, b"\x41" * 1200) + data[2 * segment :]
    cases = [
        (mixed, segment, BEACON),  # a frame of another session among them
        (data, segment, ("198.51.100.8", 4264)),  # the session's frames from another address
        (_run(good, OTHER)[0], segment, BEACON),  # a session we hold no route for
        (data + build_relay_frame(SESSION, b"")[:RELAY_HEADER_SIZE], segment, BEACON),  # an empty last frame
        (
            b"".join(b"\x00" + data[i + 1 : i + segment] for i in range(0, len(data), segment)),
            segment,
            BEACON,
        ),  # no relay frames
        (*_run([b"\x41" * (MAX_RELAY_PAYLOAD + 1)] * 2), BEACON),  # payloads above what a relay frame may carry
        (data, RELAY_HEADER_SIZE, BEACON),  # frames with room for no payload
    ]
    for case in cases:
        assert not routes.on_frames(*case), case[1:]
    assert endpoint.injected == []
    routes.endpoint = None
    assert not routes.on_frames(data, segment, BEACON)  # before the peer started


@given(st.binary(min_size=1, max_size=4000), st.integers(1, 2000), st.booleans())
def test_what_goes_in_together_is_what_each_frame_carries(tail: bytes, segment: int, framed: bool) -> None:
    """Any read (frames of our session when ``framed``, else arbitrary bytes) either goes in
    whole, with exactly the payloads that parse_relay_frame gives frame by frame, or is left."""
    routes, endpoint, _ = _relay()
    data = b"".join(build_relay_frame(SESSION, tail[i : i + segment]) for i in range(0, len(tail), segment))
    step = segment + RELAY_HEADER_SIZE
    if not framed:
        data, step = tail, segment
    taken = routes.on_frames(data, step, BEACON)
    frames = [data[i : i + step] for i in range(0, len(data), step)]
    try:
        expected = [parse_relay_frame(f) for f in frames]
    except RelayFrameError:
        expected = None
    if taken:
        assert expected is not None and all(session == SESSION for session, _ in expected)
        assert endpoint.injected[0][0] == [payload for _, payload in expected]
    else:
        assert endpoint.injected == []
        if framed:  # our session's frames, each with a payload: only a payload too large is refused
            assert expected is None
