"""The browser shell's web side of the beacon: the static page over HTTP(S) and WebSocket signalling.

Off by default (``web_enabled``). With ``web_certificate``/``web_private_key`` (PEM, the owner's domain
certificate) the page is served over HTTPS on the beacon's own TLS/TCP listener (tcp_service.py): a
browser whose server name (SNI) is a DNS name of that certificate, offering ``http/1.1``/``h2`` (or no
ALPN), gets the domain certificate and this service; peers keep the beacon's self-signed certificate and
our ALPN on the same port (beacon/client_hello.py says how one is told from the other). ``web_port``
adds a listener of its own: HTTPS with the same certificate, or plain HTTP for a reverse proxy that
terminates TLS (no certificate). ``websockets`` serves both the WebSocket (``/ws``) and the few static
files (``process_request``): one small dependency, sans-I/O inside, no web framework.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gzip
import hashlib
import html
import ipaddress
import mimetypes
import re
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from discretpeer.addresses import Addr
from discretpeer.tasks import cancel_and_wait, wait_for

from .client_hello import normalize_name
from .web_signal import MAX_MESSAGE_BYTES, Rooms, SignalError, encode, parse_client_message, turn_credentials

__all__ = ["CONNECTION_SETTINGS", "WebOptions", "WebService", "certificate_names", "options_from_config", "static_dir"]

SECURITY_HEADERS = {
    # the page only talks to its own origin (HTTP + WebSocket); WebRTC is not governed by CSP
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.lru_cache(maxsize=8)
def _csp(html: bytes) -> str:
    """The page's policy: scripts from its own origin, plus the inline scripts of this very HTML by
    their SHA-256 (the page's first script opens the WebSocket while the modules still load)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
        for m in re.findall(rb"<script>(.*?)</script>", html, re.DOTALL)
    )
    return SECURITY_HEADERS["Content-Security-Policy"] + f"; script-src 'self'{hashes}"


def static_dir() -> Path:
    """The page shipped in the package (beacon/web_static)."""
    return Path(str(resources.files("beacon") / "web_static"))


# the WebSocket side of every connection, on the page's own port and on the beacon's TLS/TCP listener alike
CONNECTION_SETTINGS: dict[str, Any] = {
    "ping_interval": 20,
    "ping_timeout": 20,
    "close_timeout": 10,
    "max_queue": 4,
    "write_limit": 65536,
}


@dataclass(frozen=True)
class WebOptions:
    host: str = "127.0.0.1"
    port: int | None = None  # a listener of its own (0 = any free port); None = none (the beacon's TLS/TCP listener)
    certificate: str = ""  # PEM paths: empty = plain HTTP (behind a reverse proxy)
    private_key: str = ""
    turn_secret: str = ""  # coturn static-auth-secret; empty = no TURN credentials handed out
    turn_urls: tuple[str, ...] = ()
    turn_ttl_seconds: int = 3600
    stun_urls: tuple[str, ...] = ()
    max_connections: int = 10000
    max_connections_per_ip: int = 32
    max_tokens_per_connection: int = 256
    messages_per_second: float = 20.0
    message_burst: int = 60
    max_queued_messages: int = 64  # per client; a client that lets more pile up is dropped (slow reader)


def options_from_config(config: Any) -> WebOptions:
    """The web service's options from a :class:`beacon.config.BeaconConfig`."""

    def urls(text: str) -> tuple[str, ...]:
        return tuple(u.strip() for u in text.split(",") if u.strip())

    return WebOptions(
        host=config.web_host,
        port=config.web_port or None,  # 0 in the settings: no listener of its own
        certificate=config.web_certificate,
        private_key=config.web_private_key,
        turn_secret=config.web_turn_secret,
        turn_urls=urls(config.web_turn_urls),
        stun_urls=urls(config.web_stun_urls),
        turn_ttl_seconds=config.web_turn_ttl_seconds,
    )


class _Client:
    def __init__(self, ws: ServerConnection, ip: str, options: WebOptions) -> None:
        self.ws = ws
        self.ip = ip
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(options.max_queued_messages)  # None: stop
        self.tokens = float(options.message_burst)
        self.stamp = time.monotonic()
        self.closing = False

    def take(self, rate: float, burst: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class WebService:
    """Static page + signalling. ``await start()``, ``await stop()``; ``address`` once started."""

    def __init__(self, options: WebOptions, *, log: Any = None, root: Path | None = None) -> None:
        self.options = options
        self.log = log
        self.root = (root or static_dir()).resolve()
        self.rooms = Rooms(max_tokens_per_client=options.max_tokens_per_connection)
        self.clients: set[_Client] = set()
        self.per_ip: defaultdict[str, int] = defaultdict(int)
        self.refused: defaultdict[str, int] = defaultdict(int)  # reason -> count (tests, metrics)
        self._server: Server | None = None
        self._static: dict[str, tuple[str, bytes, bytes, str, str]] | None = None
        # for the beacon's TLS/TCP listener (set by start(), with a certificate): the domain
        # certificate's context and the names a browser's SNI must match to be given it
        self.tls_context: ssl.SSLContext | None = None
        self.hostnames: tuple[str, ...] = ()

    @property
    def address(self) -> Addr | None:
        """The page's own listener (``port``), None without one."""
        if self._server is None or self.options.port is None:
            return None
        sock = next(iter(self._server.sockets))
        host, port = sock.getsockname()[:2]
        return host, port

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.options.certificate:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.options.certificate, self.options.private_key or None)
        except OSError as exc:  # ssl.SSLError included: a file that is not PEM, a key that does not match
            files = self.options.certificate + (f", {self.options.private_key}" if self.options.private_key else "")
            raise ValueError(f"web_certificate/web_private_key ({files}): {exc.strerror or exc}") from None
        ctx.set_alpn_protocols(["http/1.1"])  # websockets speaks HTTP/1.1; browsers offer h2 and http/1.1
        return ctx

    async def start(self) -> None:
        """Read the page and the certificate; listen on ``port`` if set. Raises OSError or
        ValueError (one line) for a certificate that does not load or names no DNS name."""
        self._files()  # read the page before listening
        self.tls_context = self.ssl_context()
        if self.tls_context is not None:
            self.hostnames = certificate_names(self.options.certificate)
        server = serve(
            self.handler,
            self.options.host,
            self.options.port,
            ssl=self.tls_context,
            process_request=self._process_request,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # no deflate: bounded memory per connection, nothing to gain on SDP
            server_header=None,
            open_timeout=10,
            **CONNECTION_SETTINGS,
        )
        if self.options.port is not None:
            self._server = await server
        else:
            # every connection comes from the beacon's TLS/TCP listener (accept()); websockets'
            # Server only asks its asyncio.Server whether it serves, and to close
            server.server = _NoListener()  # type: ignore[assignment]
            self._server = server

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def accept(self, transport: asyncio.Transport) -> asyncio.Protocol:
        """A connection of the beacon's TLS/TCP listener, its TLS handshake done with the domain
        certificate: served exactly as one of the page's own port (same handler, limits, timeouts).
        ``transport`` carries the plaintext; the returned protocol is fed what arrives."""
        assert self._server is not None, "start() first"
        connection = ServerConnection(ServerProtocol(max_size=MAX_MESSAGE_BYTES), self._server, **CONNECTION_SETTINGS)
        connection.connection_made(transport)
        return connection

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await wait_for(self._server.wait_closed(), 5)
            self._server = None

    # --- HTTP -----------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            if len(self.clients) >= self.options.max_connections:
                return self._plain(503, "too many connections")
            ip = _ip_key(connection.remote_address)
            if self.per_ip[ip] >= self.options.max_connections_per_ip:
                self.refused["per_ip"] += 1
                return self._plain(429, "too many connections from your address")
            return None
        if path == "/":
            path = "/index.html"
        page = self._files().get(path.lstrip("/"))
        if page is None:
            return self._plain(404, "not found")
        kind, body, gzipped, etag, cache = page
        csp = _csp(body if kind.startswith("text/html") else b"")
        fields = {"Content-Type": kind, **SECURITY_HEADERS, "Content-Security-Policy": csp}
        headers = Headers({**fields, "Cache-Control": cache, "ETag": etag})  # one of each (Headers is a multidict)
        if etag in request.headers.get("If-None-Match", ""):
            return Response(304, "Not Modified", headers, b"")
        if "gzip" in request.headers.get("Accept-Encoding", "") and len(gzipped) < len(body):
            headers["Content-Encoding"] = "gzip"
            body = gzipped
        headers["Vary"] = "Accept-Encoding"
        headers["Content-Length"] = str(len(body))
        return Response(200, "OK", headers, body)

    def _files(self) -> dict[str, tuple[str, bytes, bytes, str, str]]:
        """The page's files, read and gzipped once: name -> (type, body, gzipped body, ETag, Cache-Control).

        Every response closes its TCP connection (websockets answers one HTTP request per connection),
        so fewer and smaller responses are what makes the page open fast over a long RTT."""
        if self._static is None:
            files = {}
            for target in sorted(self.root.rglob("*")):
                if not target.is_file() or target.name.startswith("."):
                    continue
                name = target.relative_to(self.root).as_posix()
                body = target.read_bytes()
                if name == "index.html":  # the STUN servers: the page's first offer need not ask for them
                    stun = html.escape(",".join(self.options.stun_urls), quote=True)
                    meta = f'<meta name="dp-stun" content="{stun}">'.encode()
                    body = body.replace(b'<meta name="dp-stun" content="">', meta)
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix in (".js", ".mjs"):
                    kind = "text/javascript"
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                cache = "max-age=86400" if name.startswith("vendor/") else "no-cache"
                files[name] = (kind, body, gzip.compress(body, 9, mtime=0), etag, cache)
            self._static = files
        return self._static

    @staticmethod
    def _plain(status: int, text: str) -> Response:
        body = (text + "\n").encode()
        headers = Headers({"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))})
        reason = {404: "Not Found", 429: "Too Many Requests", 503: "Service Unavailable"}.get(status, "Error")
        return Response(status, reason, headers, body)

    # --- WebSocket ------------------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        """One signalling client (also the entry point for a shared TLS listener's http/1.1 connections)."""
        ip = _ip_key(ws.remote_address)
        client = _Client(ws, ip, self.options)
        self.clients.add(client)
        self.per_ip[ip] += 1
        writer = asyncio.create_task(self._writer(client))
        try:
            async for raw in ws:
                if not client.take(self.options.messages_per_second, self.options.message_burst):
                    self._refuse(client, "rate limited: too many messages", "rate")
                    break
                try:
                    self._on_message(client, raw)
                except SignalError as exc:
                    self._refuse(client, str(exc), "bad_message")
                    break
                if client.closing:
                    break
        except ConnectionClosed:
            pass
        finally:
            self._forget(client)
            # let the writer flush what is queued (the refusal's reason) for a moment, then stop it
            try:
                client.queue.put_nowait(None)
                await wait_for(asyncio.shield(writer), 2)
            except (asyncio.QueueFull, TimeoutError, ConnectionClosed):
                pass
            await cancel_and_wait(writer)
            with contextlib.suppress(Exception):
                await ws.close(1008 if client.closing else 1000)

    def _refuse(self, client: _Client, reason: str, counter: str) -> None:
        self.refused[counter] += 1
        self._queue(client, encode("error", reason=reason))
        client.closing = True
        if self.log is not None:
            self.log.info("web_refused", reason=reason, ip=client.ip)

    def _forget(self, client: _Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.per_ip[client.ip] -= 1
        if self.per_ip[client.ip] <= 0:
            del self.per_ip[client.ip]
        for token in self.rooms.leave(client):
            self._announce(token)

    def _on_message(self, client: _Client, raw: str | bytes) -> None:
        message = parse_client_message(raw, max_tokens=self.options.max_tokens_per_connection)
        if message.kind == "listen":
            changed, full = self.rooms.listen(client, message.tokens)
            for token in full:
                self._queue(client, encode("error", reason="token full", token=token))
            for token in changed:
                self._announce(token)
            return
        token = message.tokens[0]
        others = self.rooms.others(client, token)
        if message.kind == "send":
            text = encode("msg", token=token, data=message.data)
            for other in others:
                self._queue(other, text)
            return
        # turn: only for a client that is not alone on its token (a paired device is there)
        if not others:  # not fatal: the device may come online later
            self._queue(client, encode("error", reason="no TURN credentials: nobody else listens on that token"))
            return
        reply: dict[str, Any] = {"urls": list(self.options.stun_urls), "ttl": self.options.turn_ttl_seconds}
        if self.options.turn_secret and self.options.turn_urls:
            username, credential = turn_credentials(
                self.options.turn_secret.encode(), self.options.turn_ttl_seconds, time.time()
            )
            reply.update(turn_urls=list(self.options.turn_urls), username=username, credential=credential)
        self._queue(client, encode("turn", **reply))

    def _announce(self, token: str) -> None:
        count = self.rooms.count(token)
        # the beacon's STUN servers ride along: a device answers a direct offer without asking first
        text = encode("present", token=token, count=count, urls=list(self.options.stun_urls))
        for member in list(self.rooms.members.get(token, ())):
            self._queue(member, text)

    def _queue(self, client: _Client, text: str) -> None:
        if client.closing and not text.startswith('{"v":1,"t":"error"'):
            return
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            # a client that does not read loses its place; nobody else waits for it
            self.refused["slow_reader"] += 1
            client.closing = True
            self._forget(client)
            client.ws.transport.abort()

    async def _writer(self, client: _Client) -> None:
        while True:
            text = await client.queue.get()
            if text is None:
                return
            try:
                await wait_for(client.ws.send(text), 10)
            except (TimeoutError, ConnectionClosed):
                self.refused["slow_reader"] += 1
                self._forget(client)
                client.ws.transport.abort()
                return


class _NoListener:
    """Stands in for the asyncio.Server of websockets' Server when the page has no port of its own."""

    def __init__(self) -> None:
        self._serving = True
        self.sockets: tuple[()] = ()

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        self._serving = False

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()


def certificate_names(path: str) -> tuple[str, ...]:
    """The DNS names of the first certificate in the PEM file ``path`` (its subjectAltName), normalized:
    what a browser's SNI must be to be given that certificate on the beacon's TLS/TCP listener."""
    with open(path, "rb") as handle:
        certificates = x509.load_pem_x509_certificates(handle.read(1024 * 1024))
    try:
        san = certificates[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    names = tuple(dict.fromkeys(n for n in map(normalize_name, san.get_values_for_type(x509.DNSName)) if n))
    if not names:
        raise ValueError(f"{path}: the certificate names no DNS name (subjectAltName), so no browser would accept it")
    return names


def _ip_key(address: Any) -> str:
    """The address a connection counts against: IPv4 as is, IPv6 by /64."""
    host = address[0] if isinstance(address, tuple) else str(address)
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if ip.version == 6:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
    return host
