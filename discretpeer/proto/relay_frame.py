"""Relay datagrams: a QUIC packet wrapped for forwarding by the beacon (sans-I/O).

Modelled on TURN's ChannelData: a small header, one lookup, one send. Layout::

    u8   0x20          RELAY_DATA (QUIC fixed bit clear, so never mistaken for a QUIC packet)
    8B   session id    granted by the beacon over the authenticated beacon connection
    ...  payload       the peer-to-peer QUIC packet, end-to-end encrypted (the beacon cannot read it)

A peer sends it to the beacon's UDP port; the beacon forwards the datagram unchanged to the other
peer of the session, and only when it came from one of the session's two bound addresses.
"""

from __future__ import annotations

from discretpeer.proto.wire import RELAY_SESSION_ID_SIZE

RELAY_DATA = 0x20
RELAY_HEADER_SIZE = 1 + RELAY_SESSION_ID_SIZE
# the largest QUIC datagram a peer sends (discretpeer.path_mtu: 16,000 once a probe confirmed
# it, e.g. peers and beacon on one host or LAN; 1350 until then): what a datagram on the wire
# can carry decides, probes find out
MAX_RELAY_PAYLOAD = 16384


class RelayFrameError(ValueError):
    """Not a valid relay datagram."""


def relay_frame_header(session_id: bytes) -> bytes:
    """What goes in front of every payload of one relay session."""
    if len(session_id) != RELAY_SESSION_ID_SIZE:
        raise ValueError("relay session id has the wrong size")
    return bytes([RELAY_DATA]) + session_id


def build_relay_frame(session_id: bytes, payload: bytes) -> bytes:
    return relay_frame_header(session_id) + payload


def parse_relay_frame(datagram: bytes) -> tuple[bytes, bytes]:
    """Return (session id, payload)."""
    if len(datagram) <= RELAY_HEADER_SIZE or datagram[0] != RELAY_DATA:
        raise RelayFrameError("not a relay datagram")
    if len(datagram) - RELAY_HEADER_SIZE > MAX_RELAY_PAYLOAD:
        raise RelayFrameError("relay payload too large")
    return datagram[1:RELAY_HEADER_SIZE], datagram[RELAY_HEADER_SIZE:]
