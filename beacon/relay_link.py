"""Relay sessions between peers held by different workers or machines (shared store only).

**Design: one owner per session, chosen by rule; beacon-to-beacon forwarding only across machines.**

* The two peers' beacon connections live on two workers (``node`` = a worker's id in the store).
  The worker with the *smaller* node id owns the session: the other one forwards its peer's
  ``RelayRequest`` to it (through the store's pub/sub, with the peer's validated address), so the
  two requests pair in one :class:`~beacon.relay.RelayTable` with all its rules (introduction
  first, pairing by connection, quotas) and exactly one session exists, whatever the timing.
  The owner checks itself that its own peer was introduced to the requester on that token.
* **Same machine** (workers of one supervisor): the owner puts its worker index in the first
  byte of the session ID; the reuseport BPF program (:mod:`beacon.workers`) then brings both
  peers' relay datagrams to the owner, whichever worker holds their connections, and the owner
  sends to both peers from its own socket, which has the same address and port as every worker's.
  Nothing crosses between workers per datagram.
* **Different machines** (beacons sharing ``cert_der.bin`` and Redis, on different addresses):
  the peer keeps sending to *its* beacon, which cannot hand a datagram to another host's socket.
  So its worker (the holder) keeps a *proxy* entry for the session and forwards over the **relay
  link**, a UDP socket per worker (``relay_link_host``, an address the beacons reach each other
  on): peer → holder → link → owner → other peer, and back owner → link → holder → peer. Each
  link datagram is authenticated with HMAC-SHA256 (truncated to 16 bytes) under a key derived
  from the shared private key, so no one else can make a beacon send anything; the holder also
  sends only to the address its own peer's connection validated. The session ID's first byte is
  then 0xFF (no worker index: the kernel hashes by 4-tuple, which brings a peer's datagrams to the
  worker that took its handshake, its holder).

**NAT rebinding.** A side held by the owner follows its peer as on a single beacon (the session
moves once QUIC validated the new path). A side held by another worker of the same machine: its
datagrams still reach the owner (steered by the session ID) but its connection, and so the
validated paths, live on that worker; the owner asks it (``relay_where``, at most 4 questions per
session per second) and moves the side when it answers ``relay_moved`` (its connection validated
that address); datagrams are dropped meanwhile, as while QUIC validates a path. A peer on another
machine is known to the owner by the address it had at grant time, whatever happens later: its
holder's proxy keeps that name on the link and moves only where it sends to and accepts from
(``current``), to a path the peer's own connection validated. Nothing crosses the link for that.

"Both peers are told to use one beacon address" would avoid the link, but the grant carries no
address on the wire and a peer's NAT mapping towards another host is a new, unpunched mapping; the
relay exists because the peers' NATs are hard.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from discretpeer.addresses import Addr, map_ip, unmap_ip

LINK_MAGIC = b"\xd1"
TAG_SIZE = 16
_ADDR = struct.Struct("!16sH")
HEADER_SIZE = len(LINK_MAGIC) + TAG_SIZE + _ADDR.size
CROSS_MACHINE_SID_BYTE = 0xFF


def link_key(private_key: Any) -> bytes:
    """The link's HMAC key: every beacon holding the same ``cert_der.bin`` derives the same one."""
    raw = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"discretpeer beacon relay link v1").derive(raw)


def _pack_address(address: Addr) -> bytes:
    return _ADDR.pack(map_ip(ipaddress.ip_address(address[0])).packed, address[1])


def _unpack_address(data: bytes) -> Addr:
    packed, port = _ADDR.unpack(data)
    return str(unmap_ip(ipaddress.IPv6Address(packed))), port


def seal(key: bytes, address: Addr, data: bytes) -> bytes:
    """A link datagram: magic, tag, the peer address it concerns, the relay datagram unchanged."""
    body = _pack_address(address) + data
    return LINK_MAGIC + hmac.new(key, body, hashlib.sha256).digest()[:TAG_SIZE] + body


def unseal(key: bytes, datagram: bytes) -> tuple[Addr, bytes] | None:
    """``(address, relay datagram)`` of an authentic link datagram, else None."""
    if len(datagram) <= HEADER_SIZE or datagram[:1] != LINK_MAGIC:
        return None
    tag, body = datagram[1 : 1 + TAG_SIZE], datagram[1 + TAG_SIZE :]
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:TAG_SIZE]):
        return None
    return _unpack_address(body[: _ADDR.size]), body[_ADDR.size :]


class Proxy:
    """On the holder of a peer whose session is owned on another machine."""

    __slots__ = ("key", "address", "owner_link", "via", "current")

    def __init__(self, key: Any, address: Addr, owner_link: Addr, via: Any) -> None:
        self.key = key  # the local connection
        self.address = address  # its validated address when granted: the owner's name for this side
        self.owner_link = owner_link
        self.via = via  # the public endpoint to send to the peer from
        self.current = address  # where the peer is now: moves to a new path its connection validated


class LinkVia:
    """What the owner's :class:`~beacon.relay.RelaySide` sends through for a peer on another
    machine: ``sendto(data, peer_address)`` goes to that peer's holder over the link."""

    __slots__ = ("link", "holder")

    def __init__(self, link: RelayLink, holder: Addr) -> None:
        self.link = link
        self.holder = holder

    def sendto(self, data: bytes, address: Addr) -> None:
        self.link.send(self.holder, address, data)


class RelayLink(asyncio.DatagramProtocol):
    """The worker's link socket. ``on_datagram(source_link, peer_address, data)`` is called for
    every authentic datagram; anything else is counted and dropped."""

    def __init__(self, key: bytes, on_datagram: Any) -> None:
        self.key = key
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.rejected = 0
        self.sent = 0
        self.received = 0
        self.proxies: dict[bytes, Proxy] = {}

    @classmethod
    async def open(cls, host: str, key: bytes, on_datagram: Any) -> RelayLink:
        link = cls(key, on_datagram)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: link, local_addr=(host, 0))
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here

    @property
    def address(self) -> Addr:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, link: Addr, address: Addr, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(seal(self.key, address, data), link)
            self.sent += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        opened = unseal(self.key, data)
        if opened is None:
            self.rejected += 1
            return
        self.received += 1
        self.on_datagram((addr[0], addr[1]), opened[0], opened[1])

    def error_received(self, exc: Exception) -> None:
        return None  # an ICMP error from a link peer that went away: nothing to do

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
