"""The page over HTTPS on the beacon's own TLS/TCP listener, next to the peers' protocol.

Browsers (server name of the domain certificate, ALPN http/1.1/h2) get the owner's certificate and the
web service; peers (our ALPN) keep the beacon's self-signed certificate, whatever name they send; anything
else gets the beacon's certificate and no protocol, and is closed. The listener's bounds (handshake
deadline, per-IP and global caps) apply to web connections too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from beacon import BeaconServer, loopback_config
from beacon.web import WebOptions, WebService, static_dir
from certs import certificate_fingerprint as fingerprint
from certs import create_bundle
from discretpeer.beacon_tcp import client_context, open_channel
from discretpeer.proto import wire
from discretpeer.proto.stream_frames import BEACON_TCP_ALPN, StreamDecoder

from .chromium import CHROMIUM, Chromium
from .conftest import PROMPT, running_device
from .domain_certs import DomainCertificate, make_domain_certificate

NAME = "localhost"  # in the certificate's SAN; Chromium sends it as SNI (never for an IP literal)
READY = "window.dp && window.dp.state.status === 'ready'"


class _Log:
    """A beacon logger that keeps every event (no error may be logged by any of these attacks)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((level, event, fields))

    @property
    def errors(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [e for e in self.events if e[0] in ("error", "exception", "critical")]


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> DomainCertificate:
    return make_domain_certificate(tmp_path_factory.mktemp("domain"), (NAME, "*.beacon.test"))


@contextlib.asynccontextmanager
async def shared(domain: DomainCertificate, **changes: Any) -> AsyncIterator[tuple[BeaconServer, WebService]]:
    """A beacon whose TLS/TCP listener also serves the page (no port of the page's own)."""
    web = WebService(WebOptions(certificate=str(domain.fullchain), private_key=str(domain.private_key)))
    await web.start()
    log = _Log()
    config = loopback_config(web_enabled=True, web_certificate=str(domain.fullchain), **changes)
    server = BeaconServer(config, create_bundle(), log=log, web=web)
    try:
        await server.start()
        yield server, web
    finally:
        await web.stop()
        await server.stop()
    assert log.errors == [], log.errors


def browser_context(domain: DomainCertificate, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(domain.ca))
    context.set_alpn_protocols(list(alpn))
    return context


def any_certificate(alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


async def tls(port: int, context: ssl.SSLContext, name: str | None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.wait_for(writer.start_tls(context, server_hostname=name), 5)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Read until the server closes; what it said before."""
    data = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def refused(server: BeaconServer, reason: str) -> float:
    return server.metrics.registry.get_sample_value("beacon_tcp_refused_total", {"reason": reason}) or 0.0


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def get(port: int, context: ssl.SSLContext, path: str = "/") -> tuple[str, bytes, ssl.SSLObject]:
    reader, writer = await tls(port, context, NAME)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {NAME}:{port}\r\n\r\n".encode())
    response = await closed_by_server(reader)
    tls_object = writer.get_extra_info("ssl_object")
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body, tls_object


async def peer_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
    writer.write(wire.encode(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE))))
    decoder = StreamDecoder()
    async with asyncio.timeout(3):
        while True:
            for item in decoder.feed(await reader.read(4096)):
                return item


async def test_browsers_get_the_domain_certificate_peers_keep_the_pin(domain: DomainCertificate) -> None:
    async with shared(domain) as (server, web):
        port = server.tcp_port
        assert port == server.port and web.address is None  # one port number for everything
        # the page, verified against the test CA for the name (a browser's view)
        status, body, tls_object = await get(port, browser_context(domain))
        assert status == "HTTP/1.1 200 OK" and body == (static_dir() / "index.html").read_bytes()
        assert tls_object.selected_alpn_protocol() == "http/1.1"
        assert tls_object.getpeercert(binary_form=True) == domain.leaf_der
        # a name under the wildcard, and no ALPN at all (curl --no-alpn): the page too
        reader, writer = await tls(port, browser_context(domain, ()), "Shell.Beacon.Test")
        writer.write(b"GET /vendor/xterm.mjs HTTP/1.1\r\nHost: shell.beacon.test\r\n\r\n")
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 200 OK")
        # signalling over the same port
        async with websockets.connect(f"wss://{NAME}:{port}/ws", ssl=browser_context(domain, ())) as ws:
            await ws.send(json.dumps({"v": 1, "t": "listen", "tokens": ["ab" * 32]}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["t"] == "present"
            assert server.tcp.web_connections == 1
        # a peer, as discretpeer connects (no server name): pinned to the beacon's certificate
        channel = await open_channel("127.0.0.1", port, server.fingerprint)
        channel.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE)))
        assert isinstance((await asyncio.wait_for(channel.receive(), 3))[0], wire.Welcome)
        channel.close()
        # a peer that sends the domain's name: our ALPN wins, it still gets the pinned certificate
        context = client_context()
        for name in (NAME, "x.beacon.test"):
            reader, writer = await tls(port, context, name)
            tls_object = writer.get_extra_info("ssl_object")
            assert fingerprint(tls_object.getpeercert(binary_form=True)) == server.fingerprint
            assert tls_object.selected_alpn_protocol() == BEACON_TCP_ALPN
            assert isinstance(await peer_hello(reader, writer), wire.Welcome)
            writer.close()
        await wait_for(lambda: server.tcp.web_connections == 0 and server.connection_count == 0)
        assert len(server._ip_counts) == 0


async def test_wrong_name_or_protocol_gets_the_beacon_certificate_and_is_closed(domain: DomainCertificate) -> None:
    async with shared(domain) as (server, _):
        port = server.tcp_port
        cases = [
            ("evil.test", ("http/1.1",)),  # wrong SNI with HTTP
            ("a.b.beacon.test", ("h2", "http/1.1")),  # a wildcard covers one label only
            (None, ("http/1.1",)),  # no SNI (an IP scan): the domain is not told
            (NAME, ("imap",)),  # the right name, another protocol
        ]
        for name, alpn in cases:
            reader, writer = await tls(port, any_certificate(alpn), name)
            tls_object = writer.get_extra_info("ssl_object")
            assert fingerprint(tls_object.getpeercert(binary_form=True)) == server.fingerprint, name
            assert tls_object.selected_alpn_protocol() is None
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await closed_by_server(reader) == b""
        assert refused(server, "wrong_alpn") == len(cases)
        # a browser that checks the certificate refuses the beacon's for a wrong name
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls(port, browser_context(domain), "evil.test")
        assert server.tcp.web_connections == 0


async def test_garbage_slowloris_and_caps_on_web_connections(domain: DomainCertificate) -> None:
    async with shared(domain, tcp_handshake_timeout_seconds=0.3, max_connections_per_ip=2) as (server, _):
        port = server.tcp_port
        # garbage after the TLS handshake: an HTTP error at most, then closed
        reader, writer = await tls(port, browser_context(domain), NAME)
        writer.write(os.urandom(3000).replace(b"\n", b"") + b"\r\n\r\n")
        answer = await closed_by_server(reader)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:80]
        # binary junk framed as a huge request line
        reader, writer = await tls(port, browser_context(domain), NAME)
        writer.write(b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\n")
        await closed_by_server(reader)
        # the first bytes of a browser's ClientHello, then nothing: the handshake deadline
        hello = _client_hello(NAME, ("h2", "http/1.1"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello[: len(hello) // 2])
        await closed_by_server(reader)
        assert refused(server, "handshake_timeout") == 1
        # a ClientHello split over two records: not read as a browser's (OpenSSL goes on with the
        # beacon's certificate), then this client never finishes: the same deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = hello[5:]
        writer.write(hello[:3] + struct.pack("!H", 40) + body[:40] + hello[:3] + struct.pack("!H", len(body) - 40))
        writer.write(body[40:])
        assert await closed_by_server(reader)  # the beacon answered (ServerHello...) before giving up
        assert refused(server, "handshake_timeout") == 2
        # the per-IP cap counts WebSockets and peers together
        async with (
            websockets.connect(f"wss://{NAME}:{port}/ws", ssl=browser_context(domain, ())),
            websockets.connect(f"wss://{NAME}:{port}/ws", ssl=browser_context(domain, ())),
        ):
            assert server.tcp.web_connections == 2
            reader, writer = await tls(port, browser_context(domain), NAME)
            assert await closed_by_server(reader) == b""
            assert refused(server, "too_many_connections") == 1
            channel = await open_channel("127.0.0.1", port, server.fingerprint)
            channel.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE)))
            error = next(i for i in await asyncio.wait_for(channel.receive(), 3) if isinstance(i, wire.Error))
            assert error.code == wire.ErrorCode.TOO_MANY_CONNECTIONS
            channel.close()
        await wait_for(lambda: server.tcp.web_connections == 0 and server.tcp.handshaking == 0)
        assert refused(server, "internal_error") == 0
        # and the page still opens
        status, _, _ = await get(port, browser_context(domain))
        assert status == "HTTP/1.1 200 OK"


def _client_hello(name: str, alpn: tuple[str, ...]) -> bytes:
    context = any_certificate(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_object = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls_object.do_handshake()
    return outgoing.read()


async def test_chromium_opens_the_page_on_the_shared_port_and_gets_a_shell(domain: DomainCertificate, tmp_path: Path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: scripts/test.sh installs the Debian packages chromium, chromium-driver")
    async with shared(domain) as (server, web):
        page = f"https://{NAME}:{server.tcp_port}/"
        device_tls = ssl.create_default_context(cafile=str(domain.ca))
        url = f"wss://{NAME}:{server.tcp_port}/ws"
        async with running_device(web, tmp_path / "browsers.json", url=url, ssl_context=device_tls) as device:
            browser = Chromium(extra=domain.chromium_flags())
            try:
                await browser.start()
                await browser.navigate(page)
                await browser.wait_for(READY)
                assert await browser.eval("window.isSecureContext && location.protocol") == "https:"
                code = device.invite()
                assert await browser.eval(f"dp.pair({code!r})"), await browser.eval("dp.state.status")
                started = time.monotonic()
                await browser.navigate(page + "?again#open=0")
                await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
                opened = time.monotonic() - started
                await browser.type_text("echo shared-$((6*7))\r")
                await browser.wait_for("dp.terminalText().includes('shared-42')")
                print(f"shared listener: page open -> prompt {opened * 1000:.0f} ms")
                assert opened < 5
            finally:
                await browser.close()
        assert server.metrics.registry.get_sample_value("beacon_tcp_web_connections") is not None
