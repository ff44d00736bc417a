"""NAT mapping behaviour from one beacon: a binding request to the beacon's second UDP port (sans I/O).

The beacon answers, from its second port, with the address the request came from. Sent from the
peer's one socket, it tells whether the NAT kept the public address the beacon's main port sees
(endpoint-independent mapping) or gave a new port for the new destination (endpoint-dependent,
"symmetric"): what RFC 5780 learns with a second address, with a second port.

Layout (not QUIC: the first byte has the fixed bit 0x40 clear, so one socket carries both)::

    request (64 bytes):  magic "\\x0bDPB" | u8 kind=1 | 12B nonce | zero padding
    answer  (38 bytes):  magic | u8 kind=2 | 12B nonce | u8 family (4/6) | u16 port | 16B address

An answer is smaller than the request it answers: the port cannot amplify a spoofed request.
"""

from __future__ import annotations

import ipaddress
import struct

MAGIC = b"\x0bDPB"
KIND_REQUEST = 1
KIND_ANSWER = 2
NONCE_SIZE = 12
REQUEST_SIZE = 64
ANSWER_SIZE = len(MAGIC) + 1 + NONCE_SIZE + 1 + 2 + 16


class BehaviourError(ValueError):
    pass


def is_behaviour(data: bytes) -> bool:
    return data[:4] == MAGIC


def request(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    return (MAGIC + bytes([KIND_REQUEST]) + nonce).ljust(REQUEST_SIZE, b"\0")


def parse_request(data: bytes) -> bytes:
    """The nonce of a request; BehaviourError for anything else (including short ones)."""
    if len(data) < REQUEST_SIZE or data[:4] != MAGIC or data[4] != KIND_REQUEST:
        raise BehaviourError("not a behaviour request")
    return data[5 : 5 + NONCE_SIZE]


def answer(nonce: bytes, observed: tuple[str, int]) -> bytes:
    ip = ipaddress.ip_address(observed[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed.ljust(16, b"\0")
    return MAGIC + bytes([KIND_ANSWER]) + nonce + struct.pack("!BH", ip.version, observed[1]) + packed


def parse_answer(data: bytes) -> tuple[bytes, tuple[str, int]]:
    """(nonce, observed address) of an answer; BehaviourError for anything else."""
    if len(data) != ANSWER_SIZE or data[:4] != MAGIC or data[4] != KIND_ANSWER:
        raise BehaviourError("not a behaviour answer")
    nonce = data[5 : 5 + NONCE_SIZE]
    family, port = struct.unpack_from("!BH", data, 5 + NONCE_SIZE)
    raw = data[5 + NONCE_SIZE + 3 :]
    if family == 4 and raw[4:] == b"\0" * 12:
        host = str(ipaddress.IPv4Address(raw[:4]))
    elif family == 6:
        host = str(ipaddress.IPv6Address(raw))
    else:
        raise BehaviourError(f"bad address family {family}")
    if port == 0:
        raise BehaviourError("port 0")
    return nonce, (host, port)
