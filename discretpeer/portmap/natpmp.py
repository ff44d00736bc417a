"""NAT-PMP (RFC 6886) requests and responses for UDP mappings, sans I/O."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

NATPMP_PORT = 5351
VERSION = 0
OP_ADDRESS = 0
OP_MAP_UDP = 1

RESULTS = {
    0: "SUCCESS",
    1: "UNSUPPORTED_VERSION",
    2: "NOT_AUTHORIZED",
    3: "NETWORK_FAILURE",
    4: "OUT_OF_RESOURCES",
    5: "UNSUPPORTED_OPCODE",
}


class NatPmpError(ValueError):
    """Not a NAT-PMP response we can use (the text says why)."""


def address_request() -> bytes:
    return struct.pack("!BB", VERSION, OP_ADDRESS)


def map_request(internal_port: int, suggested_port: int, lifetime: int) -> bytes:
    """Map UDP ``internal_port``; lifetime 0 (with suggested port 0) deletes the mapping."""
    return struct.pack("!BBHHHI", VERSION, OP_MAP_UDP, 0, internal_port, suggested_port, lifetime)


@dataclass(frozen=True)
class AddressResponse:
    result: int
    epoch: int
    external_ip: str

    def encode(self) -> bytes:
        return (
            struct.pack("!BBHI", VERSION, 128 + OP_ADDRESS, self.result, self.epoch)
            + ipaddress.IPv4Address(self.external_ip).packed
        )


@dataclass(frozen=True)
class MapResponse:
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int

    @property
    def result_name(self) -> str:
        return RESULTS.get(self.result, f"result {self.result}")

    def encode(self) -> bytes:
        return struct.pack(
            "!BBHIHHI",
            VERSION,
            128 + OP_MAP_UDP,
            self.result,
            self.epoch,
            self.internal_port,
            self.external_port,
            self.lifetime,
        )


def decode(data: bytes) -> AddressResponse | MapResponse:
    """Parse a gateway's answer; :class:`NatPmpError` for anything else."""
    if len(data) < 2:
        raise NatPmpError(f"{len(data)} bytes is too short for NAT-PMP")
    version, op = data[0], data[1]
    if version != VERSION:
        raise NatPmpError(f"NAT-PMP version {version}")
    if op == 128 + OP_ADDRESS:
        if len(data) < 12:
            raise NatPmpError("short external-address response")
        result, epoch = struct.unpack_from("!HI", data, 2)
        return AddressResponse(result, epoch, str(ipaddress.IPv4Address(data[8:12])))
    if op == 128 + OP_MAP_UDP:
        if len(data) < 16:
            raise NatPmpError("short UDP mapping response")
        result, epoch, internal, external, lifetime = struct.unpack_from("!HIHHI", data, 2)
        return MapResponse(result, epoch, internal, external, lifetime)
    raise NatPmpError(f"opcode {op} is not a response we asked for")
