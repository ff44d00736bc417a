"""Dials of a peer's pairs: asks each pair's :class:`~discretpeer.pair_state.PairState` what to
dial and runs what it says (start a QUIC dial, abandon one, watch a speculative one).

Only the dialer of a pair (the lower instance value) dials; a dial goes to a confirmed
candidate, speculatively to the observed public address, or through the pair's relay route.
A verified dial is handed to the owner (``on_dialed``); a failed one lets the pair dial again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aioquic.quic.configuration import QuicConfiguration

from discretpeer.auth import AuthError
from discretpeer.connection import PeerProtocol, VerifiedPeer, authenticate_as_dialer
from discretpeer.logs import get_logger
from discretpeer.pair_state import Abandon, Action, Dial, DialKind
from discretpeer.path_mtu import AIOQUIC_MAX_DATAGRAM, BASE_DATAGRAM, SizedQuicConfiguration
from discretpeer.proto.wire import PEER_ALPN
from discretpeer.tasks import wait_for
from discretpeer.traversal import Candidate, CandidateKind
from discretpeer.tuning import DEFAULT_TUNING, Tuning

if TYPE_CHECKING:
    from discretpeer.endpoint import Endpoint
    from discretpeer.identity import Identity
    from discretpeer.pairs import Pair
    from discretpeer.peer_stats import PeerStats

log = get_logger("discretpeer.peer")

DIAL_TIMEOUT = 3.0


# (pair, the dial, its candidate (None through the relay), protocol, proof) of a verified dial
def peer_quic_configuration(
    *, is_client: bool, max_datagram_size: int = AIOQUIC_MAX_DATAGRAM, tuning: Tuning = DEFAULT_TUNING
) -> QuicConfiguration:
    """Both ends of a peer connection: 1350-byte datagrams until a path-MTU probe confirms more
    (never more than ``max_datagram_size``), receive windows and data-path settings of ``tuning``. A dialer checks
    no certificate: identity is proven by signatures bound to the connection (discretpeer.auth)."""
    return SizedQuicConfiguration(
        is_client=is_client,
        alpn_protocols=[PEER_ALPN],
        verify_mode=ssl.CERT_NONE if is_client else None,
        idle_timeout=30.0,
        max_datagram_size=min(BASE_DATAGRAM, max_datagram_size),
        datagram_size_cap=max_datagram_size,
        max_data=tuning.max_data,
        max_stream_data=tuning.max_stream_data,
        congestion_control_algorithm=tuning.congestion_control,
        tuning=tuning,
    )


OnDialed = Callable[["Pair", Dial, "Candidate | None", PeerProtocol, VerifiedPeer], None]


class Dialer:
    """Starts, abandons and watches the dials its pairs' state machines decide on."""

    def __init__(
        self,
        identity: Identity,
        stats: PeerStats,
        *,
        direct_enabled: bool,
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[Any]],
        is_closed: Callable[[], bool],
        on_dialed: OnDialed,
        configuration: Callable[[], QuicConfiguration],
    ) -> None:
        """``configuration``: makes the QUIC configuration of each dial."""
        self.identity = identity
        self._configuration = configuration
        self.stats = stats
        self.endpoint: Endpoint | None = None  # set when the peer starts
        self._direct_enabled = direct_enabled
        self._spawn = spawn
        self._is_closed = is_closed
        self._on_dialed = on_dialed

    def maybe_dial(self, pair: Pair) -> None:
        """Offer the pair's usable paths to its state machine (which dials the best one)."""
        if self._is_closed() or not pair.meeting.wanted:
            return
        pair.live_connection()
        if pair.ended:
            return
        candidates = [c.address for c in pair.session.confirmed()]
        relay = pair.relay_route.virtual if pair.relay_route is not None else None
        self._run(pair, pair.state.paths(time.monotonic(), candidates, relay, heard=pair.dial_heard))

    def dial_speculatively(self, pair: Pair) -> None:
        """Dial the observed public address at once, while probes are still on their way: when
        both NATs open at the same moment (both peers got the introduction together) this saves
        the wait for the first probe, half a round trip. It gives way to any confirmed path."""
        if not self._direct_enabled or not pair.meeting.wanted:
            return
        pair.live_connection()
        public = [c.address for c in pair.session.candidates.values() if c.kind is CandidateKind.PUBLIC]
        self._run(pair, pair.state.speculate(time.monotonic(), public))

    def settled(self, pair: Pair) -> None:
        """The pair got its connection (the state machine was told): its dial is over."""
        self._end_dial(pair)

    def _speculation_timeout(self, pair: Pair, attempt: int) -> None:
        pair.speculation_watch = None
        actions = pair.state.speculation_timeout(attempt, time.monotonic(), heard=pair.dial_heard)
        if actions:
            self._run(pair, actions)  # its Initial was lost (the other NAT was not open yet)
            self.maybe_dial(pair)

    def run(self, pair: Pair, actions: list[Action]) -> None:
        """Carry out what the pair's state machine decided."""
        self._run(pair, actions)

    def _run(self, pair: Pair, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dial):
                self._start_dial(pair, action)
            elif isinstance(action, Abandon):
                self._abandon_dial(pair, action.reason)
            else:
                delay = max(0.0, action.at - time.monotonic())
                pair.speculation_watch = asyncio.get_running_loop().call_later(
                    delay, self._speculation_timeout, pair, action.attempt
                )

    def _start_dial(self, pair: Pair, dial: Dial) -> None:
        candidate = None if dial.kind is DialKind.RELAY else pair.session.candidates.get(dial.target)
        pair.dial_protocol = None
        name = "dial via relay" if dial.kind is DialKind.RELAY else "dial"
        pair.dial_task = self._spawn(self._dial(pair, dial, candidate), name)

    def _end_dial(self, pair: Pair) -> None:
        if pair.speculation_watch is not None:
            pair.speculation_watch.cancel()
            pair.speculation_watch = None
        pair.dial_task = pair.dial_protocol = None

    def _abandon_dial(self, pair: Pair, reason: str) -> None:
        task, protocol = pair.dial_task, pair.dial_protocol
        self._end_dial(pair)
        if task is not None:
            task.cancel()
        if protocol is not None:
            protocol.close_with(reason)

    async def _dial(self, pair: Pair, dial: Dial, candidate: Candidate | None) -> None:
        """Dial a candidate, or through the pair's relay route."""
        assert self.endpoint is not None
        self.stats.dials += 1
        meeting = pair.meeting
        configuration = self._configuration()
        protocol: PeerProtocol | None = None
        relayed = dial.kind is DialKind.RELAY
        route = pair.relay_route if relayed else None
        where = "relay" if relayed else f"{dial.target[0]}:{dial.target[1]}"
        try:
            protocol = self.endpoint.connect(dial.target, configuration, PeerProtocol, route=route)  # type: ignore[assignment]  # Endpoint.connect returns an instance of the class it is given
            assert protocol is not None
            if pair.state.dialing(dial.attempt):
                pair.dial_protocol = protocol
            await wait_for(protocol.wait_handshake(), DIAL_TIMEOUT)
            verified = await authenticate_as_dialer(protocol, self.identity, pair.session.token, meeting.policy)
        except (AuthError, ConnectionError, OSError, TimeoutError) as exc:
            text = str(exc) or type(exc).__name__
            if isinstance(exc, AuthError):
                self.stats.auth_failures += 1
            else:
                self.stats.dial_failures += 1
                text = f"QUIC to {where}: {text}"
            meeting.failures.append(text)
            log.info("dial failed", address=where, error=text)
            if protocol is not None:
                protocol.close_with(text if isinstance(exc, AuthError) else "dial failed")
            if not pair.state.dial_failed(dial.attempt):
                return  # abandoned meanwhile: the pair is someone else's business now
            self._end_dial(pair)
            self.maybe_dial(pair)
            return
        self._on_dialed(pair, dial, candidate, protocol, verified)
