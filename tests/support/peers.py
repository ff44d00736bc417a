"""Peers for the tests: bound to loopback, meeting each other, carrying a stream."""

from __future__ import annotations

import asyncio

from discretpeer import Identity, Peer, PeerConnection


def loopback_peer(identity: Identity, beacons: list, **kwargs) -> Peer:
    # bind to loopback: the tests send nothing anywhere else
    return Peer(identity, beacons, host="127.0.0.1", **kwargs)


async def connect_both(
    pa: Peer, pb: Peer, meeting: str = "our shared secret", timeout: float = 10.0
) -> tuple[PeerConnection, PeerConnection]:
    """Both peers connect on ``meeting``, each expecting the other: their two connections."""
    ca, cb = await asyncio.gather(
        pa.connect(meeting, expect=pb.peer_id, timeout=timeout),
        pb.connect(meeting, expect=pa.peer_id, timeout=timeout),
    )
    return ca, cb


async def carried(sender: PeerConnection, receiver: PeerConnection, payload: bytes) -> bytes:
    """Open a stream on ``sender``, write ``payload`` and the end; what ``receiver`` reads of it."""
    _, writer = await sender.open_stream()
    writer.write(payload)
    writer.write_eof()
    reader, _ = await receiver.accept_stream()
    return await reader.read()
