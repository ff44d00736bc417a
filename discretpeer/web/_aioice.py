"""The only module that touches aiortc's and aioice's private API. When the installed versions do not
look as expected it changes nothing (aioice's own timing: slower, still correct), so it is not pinned.

Triggered checks (RFC 8445 section 7.3.1.4): when a connectivity check arrives on a pair whose own
check is already *in progress*, the agent SHOULD retransmit that check at once. aioice does not: its
check keeps its STUN timer (first retransmission after 500 ms). Across two port-restricted NATs the
device's first check is always dropped by the browser's NAT (sent before the browser's own check has
opened it), so without the immediate retransmission every direct session waited ~500 ms here - the
single largest phase of opening a shell with 80 ms between browser and device.
"""

from __future__ import annotations

import logging
from typing import Any

from aioice.ice import CandidatePair
from aiortc import RTCPeerConnection

__all__ = ["retransmit_on_incoming_check"]

log = logging.getLogger("discretpeer.web")


def retransmit_on_incoming_check(pc: RTCPeerConnection) -> bool:
    """Make ``pc``'s ICE agent retransmit an in-progress check when the peer's check on that pair
    arrives. Call after ``setRemoteDescription``; returns False (and changes nothing) when the
    installed aiortc/aioice do not look as expected."""
    try:
        connection: Any = pc.sctp.transport.transport.iceGatherer._connection  # type: ignore[union-attr]
        original = connection.check_incoming
        in_progress = CandidatePair.State.IN_PROGRESS
    except AttributeError as exc:
        log.debug("triggered-check retransmission unavailable: %s", exc)
        return False

    def check_incoming(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        original(message, addr, protocol)
        for pair in list(getattr(connection, "_check_list", ())):
            if pair.protocol is protocol and pair.remote_addr == addr and pair.state == in_progress:
                for transaction in list(getattr(protocol, "transactions", {}).values()):
                    request = getattr(transaction, "_Transaction__request", None)
                    if request is not None and getattr(transaction, "_Transaction__addr", None) == addr:
                        protocol.send_stun(request, addr)  # same transaction id: its answer completes it

    connection.check_incoming = check_incoming
    return True
