"""NAT behaviour from one beacon: a binding request to the beacon's second UDP port (sans I/O).

The beacon answers, from its second port, with the address the request came from. Sent from the
peer's one socket, it tells whether the NAT kept the public address the beacon's main port sees
(endpoint-independent mapping) or gave a new port for the new destination (endpoint-dependent,
"symmetric"): what RFC 5780 learns with a second address, with a second port.

Filtering (RFC 4787 §5) is learned the other way round, from a socket that has only ever sent to
the second port: asked to, the beacon answers from its *main* port, and the answer comes in only
if the NAT lets in packets from a port we never sent to. So that the beacon never sends from its
main port to an address that did not prove it receives there, such a request carries a cookie the
beacon gave to that very address first (flag ``FLAG_COOKIE``, then ``FLAG_OTHER_PORT``).

Layout (not QUIC: the first byte has the fixed bit 0x40 clear, so one socket carries both)::

    request (64 bytes):  magic "\\x0bDPB" | u8 kind=1 | 12B nonce | u8 flags | 16B cookie | zero padding
    answer  (38 bytes):  magic | u8 kind=2 | 12B nonce | u8 family (4/6) | u16 port | 16B address
    cookie answer (54):  magic | u8 kind=3 | 12B nonce | u8 family | u16 port | 16B address | 16B cookie
    hairpin probe (29):  magic | u8 kind=4 | 12B nonce | 12B nonce again (sent to ourselves only)

Every answer is smaller than the request it answers: the port cannot amplify a spoofed request.
Older requests are all zero after the nonce (flags 0): a beacon that knows no flags answers every
request with a plain answer, which is how a new client learns it cannot check filtering there.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from discretpeer.addresses import Addr, unmap_ip

MAGIC = b"\x0bDPB"
KIND_REQUEST = 1
KIND_ANSWER = 2
KIND_COOKIE_ANSWER = 3
KIND_HAIRPIN = 4
NONCE_SIZE = 12
COOKIE_SIZE = 16
REQUEST_SIZE = 64
ANSWER_SIZE = len(MAGIC) + 1 + NONCE_SIZE + 1 + 2 + 16
COOKIE_ANSWER_SIZE = ANSWER_SIZE + COOKIE_SIZE
HAIRPIN_SIZE = len(MAGIC) + 1 + 2 * NONCE_SIZE

# request flags (unknown bits are ignored: a later flag must be safe to ignore)
FLAG_COOKIE = 0x01  # answer with a cookie for the address the request came from
FLAG_OTHER_PORT = 0x02  # answer from the main port (only with a valid cookie for that address)
_FLAGS_AT = 5 + NONCE_SIZE
_COOKIE_AT = _FLAGS_AT + 1
NO_COOKIE = bytes(COOKIE_SIZE)


class BehaviourError(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    nonce: bytes
    flags: int = 0
    cookie: bytes = NO_COOKIE


def is_behaviour(data: bytes) -> bool:
    return data[:4] == MAGIC


def request(nonce: bytes, flags: int = 0, cookie: bytes = NO_COOKIE) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if len(cookie) != COOKIE_SIZE:
        raise ValueError(f"cookie must be {COOKIE_SIZE} bytes")
    if not 0 <= flags <= 0xFF:
        raise ValueError("flags must fit a byte")
    return (MAGIC + bytes([KIND_REQUEST]) + nonce + bytes([flags]) + cookie).ljust(REQUEST_SIZE, b"\0")


def parse_request_fields(data: bytes) -> Request:
    """Nonce, flags and cookie of a request; BehaviourError for anything else (including short ones)."""
    if len(data) < REQUEST_SIZE or data[:4] != MAGIC or data[4] != KIND_REQUEST:
        raise BehaviourError("not a behaviour request")
    return Request(data[5 : 5 + NONCE_SIZE], data[_FLAGS_AT], bytes(data[_COOKIE_AT : _COOKIE_AT + COOKIE_SIZE]))


def parse_request(data: bytes) -> bytes:
    """The nonce of a request; BehaviourError for anything else (including short ones)."""
    return parse_request_fields(data).nonce


def pack_address(address: Addr) -> bytes:
    """family (4/6) | port | 16-byte address (IPv4 zero-padded, IPv4-mapped IPv6 as IPv4)."""
    ip = unmap_ip(ipaddress.ip_address(address[0].split("%", 1)[0]))
    return struct.pack("!BH", ip.version, address[1]) + ip.packed.ljust(16, b"\0")


def _unpack_address(raw: bytes) -> Addr:
    family, port = struct.unpack_from("!BH", raw)
    packed = raw[3:19]
    if family == 4 and packed[4:] == b"\0" * 12:
        host = str(ipaddress.IPv4Address(packed[:4]))
    elif family == 6:
        host = str(ipaddress.IPv6Address(packed))
    else:
        raise BehaviourError(f"bad address family {family}")
    if port == 0:
        raise BehaviourError("port 0")
    return host, port


def answer(nonce: bytes, observed: Addr) -> bytes:
    return MAGIC + bytes([KIND_ANSWER]) + nonce + pack_address(observed)


def cookie_answer(nonce: bytes, observed: Addr, cookie: bytes) -> bytes:
    if len(cookie) != COOKIE_SIZE:
        raise ValueError(f"cookie must be {COOKIE_SIZE} bytes")
    return MAGIC + bytes([KIND_COOKIE_ANSWER]) + nonce + pack_address(observed) + cookie


def parse_answer(data: bytes) -> tuple[bytes, Addr]:
    """(nonce, observed address) of an answer; BehaviourError for anything else."""
    if len(data) != ANSWER_SIZE or data[:4] != MAGIC or data[4] != KIND_ANSWER:
        raise BehaviourError("not a behaviour answer")
    return data[5 : 5 + NONCE_SIZE], _unpack_address(data[5 + NONCE_SIZE :])


def parse_cookie_answer(data: bytes) -> tuple[bytes, Addr, bytes]:
    """(nonce, observed address, cookie) of a cookie answer; BehaviourError for anything else."""
    if len(data) != COOKIE_ANSWER_SIZE or data[:4] != MAGIC or data[4] != KIND_COOKIE_ANSWER:
        raise BehaviourError("not a behaviour cookie answer")
    return data[5 : 5 + NONCE_SIZE], _unpack_address(data[5 + NONCE_SIZE :]), bytes(data[ANSWER_SIZE:])


def hairpin_probe(nonce: bytes) -> bytes:
    """A probe a peer sends to its own public address (the nonce twice: a typo-proof check)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    return MAGIC + bytes([KIND_HAIRPIN]) + nonce + nonce


def parse_hairpin_probe(data: bytes) -> bytes:
    """The nonce of a hairpin probe; BehaviourError for anything else."""
    if len(data) != HAIRPIN_SIZE or data[:4] != MAGIC or data[4] != KIND_HAIRPIN:
        raise BehaviourError("not a hairpin probe")
    nonce = data[5 : 5 + NONCE_SIZE]
    if data[5 + NONCE_SIZE :] != nonce:
        raise BehaviourError("hairpin probe does not repeat its nonce")
    return nonce
