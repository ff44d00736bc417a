"""What an :class:`~discretpeer.endpoint.Endpoint` does with a QUIC packet for no connection it
knows: answer it (Version Negotiation, Retry), drop it, or create a server connection.

Sans-I/O: :meth:`InitialGate.decide` returns a datagram to send back or the connection IDs a new
connection starts with; the endpoint does the sending and the creating. The admission decision
(per-IP limits, Retry on demand) is the owner's ``admit`` callback, asked before any
per-connection state exists.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic.quic.packet import QuicPacketType, encode_quic_retry, encode_quic_version_negotiation
from aioquic.quic.retry import QuicRetryTokenHandler

from discretpeer.addresses import Addr

SMALLEST_INITIAL = 1200
CONNECTION_ID_LENGTH = 8


class Admission(enum.Enum):
    ACCEPT = "accept"  # create a connection now
    RETRY = "retry"  # ask for address validation first (only if the Initial has no token)
    REFUSE = "refuse"  # drop the Initial silently


@dataclass(frozen=True)
class Accept:
    """Create a server connection with these ids (``retry_scid``: the source had a valid Retry token)."""

    original_dcid: bytes
    retry_scid: bytes | None


class InitialGate:
    """Decides on packets that match no connection. ``admit(source, validated)`` is asked for
    each acceptable Initial (``validated``: it carried a valid Retry token)."""

    def __init__(self, admit: Callable[[Addr, bool], Admission] | None = None) -> None:
        self._admit = admit
        self._retry = QuicRetryTokenHandler()

    def decide(
        self, data: bytes, source: Addr, header: Any, supported_versions: list[int], now: float
    ) -> Accept | bytes | None:
        """``Accept``: create the connection; bytes: send them back to ``source``; None: drop."""
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in supported_versions
        ):
            # never answer a version negotiation with another (reflection loops), nor a datagram
            # smaller than the smallest Initial: that would send more than was received
            # (RFC 9000 §5.2.2: such packets are dropped)
            if len(data) < SMALLEST_INITIAL:
                return None
            return encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=supported_versions,
            )
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_INITIAL:
            return None
        original_dcid: bytes = header.destination_cid
        retry_scid: bytes | None = None
        decision = Admission.ACCEPT
        if header.token:
            try:
                original_dcid = self._retry.validate_token(
                    address=source, destination_cid=header.destination_cid, token=header.token, now=now
                )
                retry_scid = header.destination_cid
            except ValueError:
                # a token we did not make (or expired): validate again (a stateless Retry)
                decision = Admission.RETRY
        if decision is Admission.ACCEPT and self._admit is not None:
            # admit() hears whether the source proved it receives (a valid Retry token)
            decision = self._admit(source, retry_scid is not None)
            if decision is Admission.REFUSE:
                return None
        if decision is Admission.RETRY and retry_scid is None:
            source_cid = os.urandom(CONNECTION_ID_LENGTH)
            return encode_quic_retry(
                version=header.version,
                source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self._retry.create_token(
                    address=source,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid,
                    now=now,
                ),
            )
        return Accept(original_dcid, retry_scid)
