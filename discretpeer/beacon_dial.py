"""Dialling a beacon: the race between QUIC over UDP and TLS over TCP.

QUIC over UDP comes first; TLS over TCP (:mod:`discretpeer.beacon_tcp`, through an HTTP proxy
when one is set) starts after a short head start, or at once when UDP sends fail, and the first
to complete its Hello/Welcome wins. Both check the beacon's certificate against the pinned hash
before a single frame is sent. :class:`BeaconDialer` produces a :class:`BeaconLink` (an
established connection, Welcome received); :class:`discretpeer.beacon_client.BeaconClient`
serves it, and while on TCP asks the dialer for QUIC again now and then to move back to UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives import serialization

from certs import certificate_fingerprint
from discretpeer._aioquic import peer_certificate
from discretpeer.addresses import Addr
from discretpeer.beacon_tcp import TcpChannel, TlsPinMismatch, open_channel
from discretpeer.config import BeaconSpec
from discretpeer.endpoint import Endpoint, EndpointProtocol
from discretpeer.proto.wire import (
    BEACON_ALPN,
    MIN_VERSION,
    PROTOCOL_VERSION,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Message,
    Welcome,
    encode,
)
from discretpeer.proxy import ProxyError, proxy_for
from discretpeer.tasks import cancel_and_wait, wait_for

if TYPE_CHECKING:
    from discretpeer.beacon_client import BeaconStatus

HANDSHAKE_TIMEOUT = 5.0
TCP_HEAD_START = 0.3  # QUIC's lead before TLS/TCP starts (at once when UDP sends fail)


class PinMismatch(ConnectionError):
    pass


class VersionRefused(ConnectionError):
    """The beacon answered Hello with UNSUPPORTED_VERSION (an older beacon)."""


class BeaconLink:
    """One established beacon connection (Welcome received): QUIC or TLS/TCP."""

    def __init__(
        self,
        address: Addr,
        welcome: Welcome,
        early: list[Message],
        *,
        protocol: EndpointProtocol | None = None,
        reader: asyncio.StreamReader | None = None,
        writer: asyncio.StreamWriter | None = None,
        decoder: FrameDecoder | None = None,
        channel: TcpChannel | None = None,
    ) -> None:
        self.address = address
        self.welcome = welcome
        self.early = early
        self.protocol = protocol
        self.reader = reader
        self.writer = writer
        self.decoder = decoder
        self.channel = channel

    @property
    def transport(self) -> str:
        return self.channel.transport_name if self.channel is not None else "udp"

    def close(self, reason: str) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.protocol is not None:
            with contextlib.suppress(Exception):
                self.protocol.close(reason_phrase=reason)


class BeaconDialer:
    """Opens one connection to a beacon (QUIC, TLS/TCP, or the race of both), Hello to Welcome.

    Records in ``status`` whether UDP works. A QUIC attempt that lost the race to TCP but is
    still going is left in :attr:`late_udp` for the client to move to when it completes."""

    def __init__(self, spec: BeaconSpec, endpoint: Endpoint, instance: bytes, status: BeaconStatus) -> None:
        self.spec = spec
        self._endpoint = endpoint
        self._instance = instance
        self._status = status
        self.late_udp: asyncio.Task[BeaconLink] | None = None  # lost the race but may still succeed
        # lowered to MIN_VERSION for this beacon once it refused ours (an older beacon), for the
        # dialer's life: one refused Hello, not one per reconnect
        self.version = PROTOCOL_VERSION

    async def _hello_with_fallback(self, open_as: Callable[[int], Awaitable[BeaconLink]]) -> BeaconLink:
        try:
            return await open_as(self.version)
        except VersionRefused:
            if self.version == MIN_VERSION:
                raise
            self.version = MIN_VERSION
            return await open_as(MIN_VERSION)

    async def resolve(self) -> list[Addr]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.spec.host, self.spec.port, type=socket.SOCK_DGRAM)
        addresses: list[Addr] = []
        for family, _, _, _, sockaddr in infos:
            if family == socket.AF_INET6 and not self._endpoint_supports_ipv6():
                continue
            address = (str(sockaddr[0]), int(sockaddr[1]))
            if address not in addresses:
                addresses.append(address)
        # IPv6 first where it works: it needs no NAT traversal at all on many networks
        addresses.sort(key=lambda a: 0 if ":" in a[0] else 1)
        if not addresses:
            raise ConnectionError(f"{self.spec.host} has no usable address")
        return addresses

    def _endpoint_supports_ipv6(self) -> bool:
        return ":" in self._endpoint.local_address[0]

    async def open_udp(self, addresses: list[Addr]) -> BeaconLink:
        errors: list[str] = []
        for address in addresses:
            try:
                return await self._open_quic(address)
            except PinMismatch:
                raise
            except (OSError, ConnectionError, TimeoutError) as exc:
                errors.append(f"{address[0]}: {type(exc).__name__} {exc}".strip())
        raise ConnectionError("; ".join(errors) or "no address answered")

    async def _open_tcp(self) -> BeaconLink:
        return await self._hello_with_fallback(self._open_tcp_as)

    async def _open_tcp_as(self, version: int) -> BeaconLink:
        spec = self.spec
        proxy = proxy_for(spec.host, spec.proxy)
        channel = await open_channel(spec.host, spec.tcp, spec.cert_hash, proxy=proxy, timeout=HANDSHAKE_TIMEOUT)
        try:
            channel.send(Hello(version=version, instance=self._instance))
            welcome, early = await wait_for(self._tcp_welcome(channel), HANDSHAKE_TIMEOUT)
        except BaseException:
            channel.close()
            raise
        # the peer address of the socket (resolved by the system, or the name through a proxy)
        peername = channel._writer.get_extra_info("peername")  # noqa: SLF001 - our own channel's socket
        address = (str(peername[0]), int(peername[1])) if peername and proxy is None else (spec.host, spec.tcp)
        return BeaconLink(address, welcome, early, channel=channel)

    async def _tcp_welcome(self, channel: TcpChannel) -> tuple[Welcome, list[Message]]:
        while True:
            found = _welcome_in([i for i in await channel.receive() if not isinstance(i, bytes)])
            if found is not None:
                return found

    async def race(self) -> BeaconLink:
        """QUIC first; TLS/TCP after TCP_HEAD_START or as soon as UDP sends fail; first wins."""
        loop = asyncio.get_running_loop()
        addresses = await self.resolve()
        send_errors = self._endpoint.send_errors
        udp = loop.create_task(self.open_udp(addresses))
        tcp: asyncio.Task[BeaconLink] | None = None
        started = loop.time()
        errors: dict[str, BaseException] = {}
        winner: BeaconLink | None = None
        try:
            while True:
                pending = [t for t in (udp, tcp) if t is not None and not t.done()]
                if tcp is None:
                    await asyncio.wait(pending, timeout=0.05)
                    if (
                        udp.done()
                        or self._endpoint.send_errors > send_errors
                        or loop.time() - started >= TCP_HEAD_START
                    ):
                        tcp = loop.create_task(self._open_tcp())
                elif pending:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for name, task in (("udp", udp), ("tcp", tcp)):
                    if task is None or not task.done() or name in errors:
                        continue
                    if task.exception() is None:
                        winner = task.result()
                        if name == "udp":
                            self._status.udp_works, self._status.udp_error = True, None
                        elif "udp" not in errors:
                            self._status.udp_works = False
                            self._status.udp_error = f"QUIC did not answer within {loop.time() - started:.1f} s"
                        return winner
                    errors[name] = task.exception()  # type: ignore[assignment]  # not None: the task failed
                    if name == "udp":
                        self._status.udp_works = False
                        self._status.udp_error = describe_failure(errors[name])
                if len(errors) == 2:
                    break
        finally:
            if winner is not None and winner.channel is not None and not udp.done():
                # TCP won while QUIC is still trying (a slow path, not a blocked one): let it go on;
                # when it completes, the client moves to it (see _retry_udp)
                self.late_udp = udp
            losers = [task for task in (udp, tcp) if task is not None and task is not self.late_udp]
            try:
                await cancel_and_wait(*(task for task in losers if not task.done()))
            finally:  # (also when we are cancelled meanwhile: a link that did open is closed)
                for task in losers:
                    # task.exception() also marks a failure as seen (no "never retrieved" warning)
                    done = task.done() and not task.cancelled() and task.exception() is None
                    if done and task.result() is not winner:
                        task.result().close("lost the race")
        for exc in errors.values():
            if isinstance(exc, (PinMismatch, TlsPinMismatch, ProxyError)):
                raise exc
        raise ConnectionError(f"UDP: {describe_failure(errors['udp'])}; TCP: {describe_failure(errors['tcp'])}")

    async def _open_quic(self, address: Addr) -> BeaconLink:
        return await self._hello_with_fallback(lambda version: self._open_quic_as(address, version))

    async def _open_quic_as(self, address: Addr, version: int) -> BeaconLink:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[BEACON_ALPN],
            verify_mode=ssl.CERT_NONE,  # pinned by hash below, before anything is sent
            idle_timeout=60.0,
            server_name=None if _is_ip(self.spec.host) else self.spec.host,
        )
        protocol = self._endpoint.connect(address, configuration)
        try:
            await wait_for(protocol.wait_connected(), HANDSHAKE_TIMEOUT)
            certificate = peer_certificate(protocol.quic)
            if certificate is None:
                raise PinMismatch(f"beacon {self.spec} presented no certificate")
            fingerprint = certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER))
            if fingerprint != self.spec.cert_hash:
                raise PinMismatch(f"beacon {self.spec} certificate hash is {fingerprint}, pinned {self.spec.cert_hash}")
            reader, writer = await protocol.create_stream()
            writer.write(encode(Hello(version=version, instance=self._instance)))
            decoder = FrameDecoder()
            welcome, early = await wait_for(self._read_until_welcome(reader, decoder), HANDSHAKE_TIMEOUT)
        except BaseException:
            with contextlib.suppress(Exception):
                protocol.close(reason_phrase="connect failed")
            raise
        return BeaconLink(address, welcome, early, protocol=protocol, reader=reader, writer=writer, decoder=decoder)

    async def _read_until_welcome(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder
    ) -> tuple[Welcome, list[Message]]:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("beacon closed the stream before welcoming us")
            found = _welcome_in(decoder.feed(data))
            if found is not None:
                return found


def _welcome_in(messages: list[Message]) -> tuple[Welcome, list[Message]] | None:
    """The first Welcome among a beacon's first messages and those after it; None if none came
    yet. An Error before it is the beacon's refusal: ConnectionError."""
    for index, message in enumerate(messages):
        if isinstance(message, Welcome):
            return message, messages[index + 1 :]
        if isinstance(message, Error):
            if message.code == ErrorCode.UNSUPPORTED_VERSION:
                raise VersionRefused(f"beacon refused: {message.error_code!s} {message.message}")
            raise ConnectionError(f"beacon refused: {message.error_code!s} {message.message}")
    return None


def describe_failure(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, asyncio.TimeoutError) or not text:
        return f"{type(exc).__name__} (no answer)" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
    return text


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%", 1)[0])
        return True
    except OSError:
        return False
