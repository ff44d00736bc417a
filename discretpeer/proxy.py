"""HTTP CONNECT proxies: which one to use for a beacon, and the tunnel request (sans-I/O parts
plus one small asyncio function).

The proxy comes from an explicit setting (``--proxy URL`` / the ``proxy`` config key), else from
``HTTPS_PROXY`` / ``https_proxy``, unless ``NO_PROXY`` / ``no_proxy`` names the beacon's host.
``http://[user:password@]host[:port]`` (port 3128 when omitted, credentials sent with basic
auth). Every failure is a :class:`ProxyError` whose text is one line naming the proxy and what
happened (refused with 403, needs credentials 407, no answer, ...).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from discretpeer.tasks import wait_for

DEFAULT_PROXY_PORT = 3128
MAX_RESPONSE_HEAD = 8192
PROXY_TIMEOUT = 5.0


class ProxyError(ConnectionError):
    """The proxy could not give us a tunnel; ``str()`` is one line naming it."""


@dataclass(frozen=True)
class ProxySpec:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        """``host:port`` (credentials never shown)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"proxy {self.display}"

    @classmethod
    def parse(cls, url: str) -> ProxySpec:
        """``http://[user:pass@]host[:port]`` (a bare ``host:port`` is read as http)."""
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urllib.parse.urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"proxy URL {url!r}: {exc}") from None
        if parts.scheme not in ("http",):
            raise ValueError(f"proxy URL {url!r}: only http:// proxies (HTTP CONNECT) are supported")
        if not parts.hostname:
            raise ValueError(f"proxy URL {url!r}: no host")
        user = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port or DEFAULT_PROXY_PORT, user, password)


def _no_proxy_matches(host: str, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
        entry = entry.strip("[]")
        try:
            if "/" in entry and ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            pass
        bare = entry.lstrip(".")
        if host == bare or host.endswith("." + bare):
            return True
    return False


def proxy_for(host: str, explicit: str | None = None, environ: Mapping[str, str] | None = None) -> ProxySpec | None:
    """The proxy to reach ``host`` through, or None. ``explicit`` wins over the environment;
    ``"none"`` / ``""`` as explicit setting means: never a proxy."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return None if explicit.strip().lower() in ("", "none", "direct") else ProxySpec.parse(explicit)
    url = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if not url:
        return None
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    if _no_proxy_matches(host, no_proxy):
        return None
    return ProxySpec.parse(url)


def connect_request(host: str, port: int, proxy: ProxySpec) -> bytes:
    """The CONNECT request for ``host:port``."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        secret = f"{proxy.username}:{proxy.password or ''}".encode()
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(secret).decode("ascii"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_response_head(head: bytes, proxy: ProxySpec, target: str) -> None:
    """Raise :class:`ProxyError` unless ``head`` (status line + headers) says 2xx."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyError(f"{proxy} did not answer as an HTTP proxy (got {line[:60]!r})")
    status = int(parts[1])
    reason = parts[2].strip() if len(parts) > 2 else ""
    if 200 <= status < 300:
        return
    if status == 407:
        what = "needs credentials" if proxy.username is None else "rejected our credentials"
        raise ProxyError(f"{proxy} {what} (407 {reason}): give http://user:password@{proxy.display}")
    if status == 403:
        raise ProxyError(f"{proxy} refuses to tunnel to {target} (403 {reason}): its rules may allow port 443 only")
    raise ProxyError(f"{proxy} refused to tunnel to {target} ({status} {reason})")


async def open_tunnel(
    proxy: ProxySpec, host: str, port: int, timeout: float = PROXY_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``host:port`` through ``proxy`` (CONNECT answered 2xx)."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        reader, writer = await wait_for(asyncio.open_connection(proxy.host, proxy.port), timeout)
    except TimeoutError:
        raise ProxyError(f"{proxy} did not accept a TCP connection within {timeout:g} s") from None
    except OSError as exc:
        raise ProxyError(f"{proxy} unreachable: {exc.strerror or exc}") from None
    try:
        writer.write(connect_request(host, port, proxy))
        try:
            head = await wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except TimeoutError:
            raise ProxyError(f"{proxy} did not answer CONNECT {target} within {timeout:g} s") from None
        except asyncio.LimitOverrunError:
            raise ProxyError(f"{proxy} sent an oversized answer to CONNECT") from None
        except (asyncio.IncompleteReadError, OSError):
            raise ProxyError(f"{proxy} closed the connection instead of answering CONNECT {target}") from None
        parse_response_head(head, proxy, target)
    except BaseException:
        writer.close()
        raise
    return reader, writer
