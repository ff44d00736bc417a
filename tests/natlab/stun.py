"""A minimal STUN (RFC 5389) Binding responder for the lab's core, and its sans-I/O codec.

miniupnpd refuses to map while its WAN address is in a reserved range (203.0.113.0/24 is one)
unless STUN tells it that this is its public address; it sends four Binding Requests (some with
CHANGE-REQUEST) and wants all four answered from the server's address. This answers every
Binding Request from where it came, with XOR-MAPPED-ADDRESS, ignoring CHANGE-REQUEST.

usage: stun.py HOST [PORT]
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

MAGIC = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020


class StunError(ValueError):
    pass


def parse_request(data: bytes) -> bytes:
    """The transaction id of a Binding Request; StunError for anything else."""
    if len(data) < 20:
        raise StunError("shorter than a STUN header")
    kind, length, magic = struct.unpack_from("!HHI", data, 0)
    if kind != BINDING_REQUEST or magic != MAGIC:
        raise StunError("not a Binding Request")
    if length % 4 or 20 + length > len(data):
        raise StunError("bad length")
    return data[8:20]


def binding_success(transaction: bytes, host: str, port: int) -> bytes:
    ip = ipaddress.IPv4Address(host)
    xport = port ^ (MAGIC >> 16)
    xaddr = int(ip) ^ MAGIC
    attr = struct.pack("!HHBBHI", XOR_MAPPED_ADDRESS, 8, 0, 1, xport, xaddr)
    return struct.pack("!HHI", BINDING_SUCCESS, len(attr), MAGIC) + transaction + attr


def parse_success(data: bytes) -> tuple[bytes, str, int]:
    """(transaction, host, port) of a Binding Success with an IPv4 XOR-MAPPED-ADDRESS."""
    if len(data) < 32:
        raise StunError("too short")
    kind, length, magic = struct.unpack_from("!HHI", data, 0)
    if kind != BINDING_SUCCESS or magic != MAGIC or length + 20 > len(data):
        raise StunError("not a Binding Success")
    offset = 20
    while offset + 4 <= 20 + length:
        atype, alen = struct.unpack_from("!HH", data, offset)
        if atype == XOR_MAPPED_ADDRESS and alen == 8 and offset + 12 <= len(data) and data[offset + 5] == 1:
            _, _, xport, xaddr = struct.unpack_from("!BBHI", data, offset + 4)
            return data[8:20], str(ipaddress.IPv4Address(xaddr ^ MAGIC)), xport ^ (MAGIC >> 16)
        offset += 4 + (alen + 3) // 4 * 4
    raise StunError("no XOR-MAPPED-ADDRESS")


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3478
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        data, source = sock.recvfrom(2048)
        try:
            transaction = parse_request(data)
        except StunError:
            continue
        sock.sendto(binding_success(transaction, *source), source)


if __name__ == "__main__":
    main()
