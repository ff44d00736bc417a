"""A minimal beacon client for tests: real QUIC over a real UDP socket, pinned by certificate hash."""

from __future__ import annotations

import asyncio
import os
import ssl

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

from certs import certificate_fingerprint
from discretpeer.endpoint import Endpoint, EndpointProtocol
from discretpeer.proto import wire

PIN_MISMATCH = 0x100  # QUIC application error code the client closes with on a wrong pin


class PinMismatch(ConnectionError):
    """The beacon's certificate does not hash to the pinned value."""


class Closed(ConnectionError):
    """The connection ended; ``event`` is aioquic's ConnectionTerminated."""

    def __init__(self, event: events.ConnectionTerminated | None) -> None:
        super().__init__(f"connection closed: {event}")
        self.event = event


class ClientProtocol(EndpointProtocol):
    def __init__(self, quic, *args, **kwargs) -> None:
        super().__init__(quic, *args, **kwargs)
        self.decoder = wire.FrameDecoder()
        self.inbox: asyncio.Queue[wire.Message | None] = asyncio.Queue()
        self.terminated: events.ConnectionTerminated | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if event.stream_id == 0:
                for message in self.decoder.feed(event.data):
                    self.inbox.put_nowait(message)
            return
        super().quic_event_received(event)
        if isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            self.inbox.put_nowait(None)


def peer_fingerprint(protocol: EndpointProtocol) -> str:
    certificate = protocol._quic.tls._peer_certificate
    return certificate_fingerprint(certificate.public_bytes(Encoding.DER))


class BeaconClient:
    def __init__(self, endpoint: Endpoint, protocol: ClientProtocol, instance: bytes, owns_endpoint: bool) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.instance = instance
        self.owns_endpoint = owns_endpoint
        self.welcome: wire.Welcome | None = None
        # RelayRequest frames from the beacon ("the other peer asks for a relay") are kept here,
        # out of recv()'s way, unless a test wants to see them in order
        self.skip_nudges = True
        self.nudges: list[wire.RelayRequest] = []

    @classmethod
    async def connect(
        cls,
        address: tuple[str, int],
        fingerprint: str,
        *,
        endpoint: Endpoint | None = None,
        local_host: str = "127.0.0.1",
        instance: bytes | None = None,
        hello: bool = True,
        timeout: float = 5.0,
        version: int = wire.PROTOCOL_VERSION,
    ) -> BeaconClient:
        owns = endpoint is None
        if endpoint is None:
            endpoint = await Endpoint.open(local_host, 0)
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=[wire.BEACON_ALPN], verify_mode=ssl.CERT_NONE, idle_timeout=30.0
        )
        protocol = endpoint.connect(address, configuration, ClientProtocol)
        try:
            await asyncio.wait_for(protocol.wait_connected(), timeout)
            if peer_fingerprint(protocol) != fingerprint:
                protocol.close(error_code=PIN_MISMATCH, reason_phrase="certificate pin mismatch")
                raise PinMismatch(f"beacon certificate hash {peer_fingerprint(protocol)} != pinned {fingerprint}")
        except BaseException:
            if owns:
                endpoint.close()
            raise
        client = cls(endpoint, protocol, instance or os.urandom(wire.INSTANCE_SIZE), owns)
        if hello:
            client.send(wire.Hello(version=version, instance=client.instance))
            client.welcome = await client.expect(wire.Welcome)
        return client

    # --- sending -------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.protocol._quic.send_stream_data(0, data)
        self.protocol.transmit()

    def send(self, message: wire.Message) -> None:
        self.send_raw(wire.encode(message))

    def announce(self, add=(), withdraw=(), candidates=None) -> None:
        self.send(wire.Announce(add=tuple(add), withdraw=tuple(withdraw), candidates=candidates))

    # --- receiving -----------------------------------------------------------------------------

    async def recv(self, timeout: float = 3.0) -> wire.Message:
        while True:
            message = await asyncio.wait_for(self.protocol.inbox.get(), timeout)
            if message is None:
                self.protocol.inbox.put_nowait(None)  # stay closed for later calls
                raise Closed(self.protocol.terminated)
            if self.skip_nudges and isinstance(message, wire.RelayRequest):
                self.nudges.append(message)
                continue
            return message

    async def expect(self, kind: type, timeout: float = 3.0):
        message = await self.recv(timeout)
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def expect_nothing(self, timeout: float = 0.3) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                message = await asyncio.wait_for(
                    self.protocol.inbox.get(), max(0.0, deadline - asyncio.get_running_loop().time())
                )
            except TimeoutError:
                return
            if self.skip_nudges and isinstance(message, wire.RelayRequest):
                self.nudges.append(message)
                continue
            raise AssertionError(f"unexpected {message!r}")

    async def wait_closed(self, timeout: float = 5.0) -> events.ConnectionTerminated:
        await asyncio.wait_for(self.protocol.wait_closed(), timeout)
        assert self.protocol.terminated is not None
        return self.protocol.terminated

    @property
    def local_address(self) -> tuple[str, int]:
        return self.endpoint.local_address

    async def close(self) -> None:
        if self.protocol.terminated is None:
            self.protocol.close()
        if self.owns_endpoint:
            self.endpoint.close()
        await asyncio.sleep(0)
