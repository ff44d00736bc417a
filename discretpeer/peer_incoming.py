"""Connections other peers open to a :class:`~discretpeer.peer.Peer`: admitted while few
handshakes are unauthenticated, then verified (QUIC handshake, then the dialer's identity proof
for a meeting we know) and handed to the peer with the pair and path they belong to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from discretpeer.auth import AuthError
from discretpeer.connection import PathKind, PeerProtocol, VerifiedPeer, authenticate_as_listener
from discretpeer.dialer import DIAL_TIMEOUT
from discretpeer.endpoint import Admission
from discretpeer.paths import is_virtual
from discretpeer.tasks import wait_for

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection

    from discretpeer.addresses import Addr
    from discretpeer.identity import Identity
    from discretpeer.meeting_book import Meeting, MeetingBook
    from discretpeer.pairs import Pair, PairDriver
    from discretpeer.peer_stats import PeerStats

MAX_PENDING_INCOMING = 32

OnVerified = Callable[["Meeting", PeerProtocol, VerifiedPeer, PathKind, "Pair | None"], None]


class IncomingHandshakes:
    """The endpoint's ``admit`` and ``create_server_protocol``; ``on_verified(meeting, protocol,
    verified, path, pair)`` hears of each connection that proved its identity."""

    def __init__(
        self,
        identity: Identity,
        stats: PeerStats,
        book: MeetingBook,
        driver: PairDriver,
        *,
        direct_enabled: bool,
        spawn: Callable[[Any, str], asyncio.Task[Any]],
        is_closed: Callable[[], bool],
        on_verified: OnVerified,
    ) -> None:
        self._identity = identity
        self._stats = stats
        self._book = book
        self._driver = driver
        self._direct_enabled = direct_enabled
        self._spawn = spawn
        self._is_closed = is_closed
        self._on_verified = on_verified
        self.pending = 0  # handshakes admitted and not yet verified (or failed)

    def admit(self, source: Addr, validated: bool) -> Admission:
        if not self._direct_enabled and not is_virtual(source):
            return Admission.REFUSE  # relay only: never answer anyone directly
        # unauthenticated handshakes hold memory: cap how many are in flight at once
        return Admission.ACCEPT if self.pending < MAX_PENDING_INCOMING else Admission.REFUSE

    def new_protocol(self, quic: QuicConnection) -> PeerProtocol:
        protocol = PeerProtocol(quic)
        self.pending += 1
        self._stats.incoming_attempts += 1
        self._spawn(self._accept(protocol), "accept")
        return protocol

    async def _accept(self, protocol: PeerProtocol) -> None:
        try:
            await wait_for(protocol.wait_handshake(), DIAL_TIMEOUT * 2)
            verified = await authenticate_as_listener(protocol, self._identity, self._book.policy_for_token)
        except asyncio.CancelledError:
            # we are closing: say so, or the dialer (verified on its side already) would take the
            # connection for a live one and hear nothing until its path timeout
            protocol.close_with("peer closing")
            raise
        except (AuthError, ConnectionError, OSError, TimeoutError) as exc:
            text = str(exc) or type(exc).__name__
            if isinstance(exc, AuthError):
                self._stats.auth_failures += 1
                # the meeting is not known before the proof is read: tell every waiting one
                for waiting in self._book:
                    waiting.failures.append(f"incoming from {protocol.remote_address}: {text}")
            protocol.close_with(text)
            return
        finally:
            self.pending -= 1
        if self._is_closed():  # verified while the peer was closing the others
            protocol.close_with("peer closing")
            return
        meeting = self._book.by_token(verified.token)
        if meeting is None:
            protocol.close_with("meeting withdrawn")
            return
        route = protocol.route
        path: PathKind
        pair: Pair | None
        if route is not None and route.kind == "relay" and route.relay is not None:
            pair = self._driver.relay.pair_of(route.relay.session_id)
            path = "relay"
        else:
            pair = self._driver.pair_for_address(meeting, protocol.remote_address)
            candidate = pair.session.candidates.get(protocol.remote_address) if pair is not None else None
            path = self._driver.path_kind(candidate, protocol.remote_address)
        self._on_verified(meeting, protocol, verified, path, pair)
