"""PCP (RFC 6887) MAP requests and responses for UDP, sans I/O.

Only what a client needs: build a MAP request (lifetime 0 deletes), parse the gateway's answer.
Addresses travel as 16 bytes (IPv4 as ``::ffff:a.b.c.d``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from discretpeer.addresses import map_ip, unmap_ip

PCP_PORT = 5351
VERSION = 2
OPCODE_MAP = 1
PROTOCOL_UDP = 17
NONCE_SIZE = 12
HEADER_SIZE = 24
MAP_SIZE = 36
MAX_MESSAGE = 1100  # RFC 6887 §7: messages are at most 1,100 bytes

RESULTS = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}


class PcpError(ValueError):
    """Not a PCP MAP response we can use (the text says why)."""


def _pack_ip(host: str) -> bytes:
    return map_ip(ipaddress.ip_address(host)).packed


def _unpack_ip(raw: bytes) -> str:
    return str(unmap_ip(ipaddress.IPv6Address(raw)))


@dataclass(frozen=True)
class MapRequest:
    nonce: bytes
    client_ip: str
    internal_port: int
    lifetime: int
    suggested_port: int = 0
    suggested_ip: str = "0.0.0.0"

    def encode(self) -> bytes:
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"PCP nonce must be {NONCE_SIZE} bytes")
        header = struct.pack("!BBHI", VERSION, OPCODE_MAP, 0, self.lifetime) + _pack_ip(self.client_ip)
        body = self.nonce + struct.pack("!B3xHH", PROTOCOL_UDP, self.internal_port, self.suggested_port)
        return header + body + _pack_ip(self.suggested_ip)

    @classmethod
    def decode(cls, data: bytes) -> MapRequest:
        """For tests and a lab gateway: the inverse of :meth:`encode`."""
        if len(data) < HEADER_SIZE + MAP_SIZE or data[0] != VERSION or data[1] != OPCODE_MAP:
            raise PcpError("not a PCP MAP request")
        (lifetime,) = struct.unpack_from("!I", data, 4)
        protocol, internal, suggested = struct.unpack_from("!B3xHH", data, HEADER_SIZE + NONCE_SIZE)
        if protocol != PROTOCOL_UDP:
            raise PcpError(f"protocol {protocol} is not UDP")
        return cls(
            nonce=data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
            client_ip=_unpack_ip(data[8:24]),
            internal_port=internal,
            lifetime=lifetime,
            suggested_port=suggested,
            suggested_ip=_unpack_ip(data[HEADER_SIZE + 20 : HEADER_SIZE + 36]),
        )


@dataclass(frozen=True)
class MapResponse:
    result: int
    lifetime: int
    epoch: int
    nonce: bytes
    internal_port: int
    external_port: int
    external_ip: str

    @property
    def result_name(self) -> str:
        return RESULTS.get(self.result, f"result {self.result}")

    def encode(self) -> bytes:
        header = struct.pack("!BBxBII12x", VERSION, 0x80 | OPCODE_MAP, self.result, self.lifetime, self.epoch)
        body = self.nonce + struct.pack("!B3xHH", PROTOCOL_UDP, self.internal_port, self.external_port)
        return header + body + _pack_ip(self.external_ip)

    @classmethod
    def decode(cls, data: bytes) -> MapResponse:
        """Parse a MAP response; :class:`PcpError` for anything else (options are skipped)."""
        if len(data) > MAX_MESSAGE:
            raise PcpError(f"{len(data)} bytes is longer than any PCP message")
        if len(data) < HEADER_SIZE:
            raise PcpError(f"{len(data)} bytes is shorter than a PCP header")
        version, op, result, lifetime, epoch = struct.unpack_from("!BBxBII", data, 0)
        if version != VERSION:
            raise PcpError(f"PCP version {version}")
        if op != 0x80 | OPCODE_MAP:
            raise PcpError(f"opcode {op:#x} is not a MAP response")
        if len(data) < HEADER_SIZE + MAP_SIZE:
            if result == 0:
                raise PcpError("MAP response without its MAP body")
            # error answers may come without the body (e.g. UNSUPP_VERSION)
            return cls(result, lifetime, epoch, b"", 0, 0, "0.0.0.0")
        nonce = data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
        protocol, internal, external = struct.unpack_from("!B3xHH", data, HEADER_SIZE + NONCE_SIZE)
        if protocol != PROTOCOL_UDP:
            raise PcpError(f"MAP response for protocol {protocol}, not UDP")
        ip = _unpack_ip(data[HEADER_SIZE + 20 : HEADER_SIZE + 36])
        return cls(result, lifetime, epoch, nonce, internal, external, ip)
