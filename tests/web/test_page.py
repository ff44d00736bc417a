"""The beacon's static page: the files of the package, gzipped, revalidated by ETag; nothing else."""

from __future__ import annotations

import asyncio
import gzip
import urllib.error
import urllib.request

from beacon.web import static_dir

from .conftest import page_url


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_page_files_gzip_etag_and_refusals(web_service) -> None:
    base = page_url(web_service)
    status, headers, body = await asyncio.to_thread(_get, base)
    assert status == 200 and body == (static_dir() / "index.html").read_bytes()
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = await asyncio.to_thread(_get, base + "vendor/xterm.mjs", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and headers["Content-Type"] == "text/javascript"
    assert gzip.decompress(body) == (static_dir() / "vendor" / "xterm.mjs").read_bytes()
    assert len(body) < len(gzip.decompress(body)) / 2
    status, _, _ = await asyncio.to_thread(_get, base + "vendor/xterm.mjs", {"If-None-Match": headers["ETag"]})
    assert status == 304
    for path in ("nope.js", "../pyproject.toml", "%2e%2e/pyproject.toml", "vendor/../../web.py", ".hidden"):
        status, _, _ = await asyncio.to_thread(_get, base + path)
        assert status == 404, path


async def test_https_with_the_owners_certificate(tmp_path) -> None:
    """web_certificate/web_private_key: the page and the WebSocket over TLS (ALPN http/1.1)."""
    import json
    import ssl

    import websockets

    from beacon.web import WebOptions, WebService
    from tests.support.certificates import make_tls_files

    tls = make_tls_files(tmp_path, names=("localhost",))
    cert_path, key_path = tls.fullchain, tls.key
    service = WebService(WebOptions(host="127.0.0.1", port=0, certificate=str(cert_path), private_key=str(key_path)))
    await service.start()
    try:
        port = service.address[1]
        client = ssl.create_default_context(cafile=str(tls.ca))
        client.set_alpn_protocols(["http/1.1"])

        def fetch() -> tuple[int, bytes, str | None]:
            with urllib.request.urlopen(f"https://localhost:{port}/", context=client, timeout=5) as response:
                return response.status, response.read(), None

        status, body, _ = await asyncio.to_thread(fetch)
        assert status == 200 and b"discretpeer" in body
        async with websockets.connect(f"wss://localhost:{port}/ws", ssl=client) as ws:
            await ws.send(json.dumps({"v": 1, "t": "listen", "tokens": ["ab" * 32]}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {
                "v": 1,
                "t": "present",
                "token": "ab" * 32,
                "count": 1,
                "urls": list(service.options.stun_urls),
            }
    finally:
        await service.stop()


async def test_inline_script_allowed_by_its_hash_and_stun_servers_in_the_page() -> None:
    """The page's one inline script (it opens the WebSocket during the HTML parse) is allowed by its
    SHA-256 and nothing else inline is; the beacon writes its STUN servers into the page."""
    import base64
    import hashlib
    import re

    from beacon.web import WebOptions, WebService

    service = WebService(WebOptions(host="127.0.0.1", port=0, stun_urls=("stun:203.0.113.10:4264", 'stun:"x">')))
    await service.start()
    try:
        status, headers, body = await asyncio.to_thread(_get, page_url(service))
    finally:
        await service.stop()
    assert status == 200
    assert b'<meta name="dp-stun" content="stun:203.0.113.10:4264,stun:&quot;x&quot;&gt;">' in body
    scripts = re.findall(rb"<script>(.*?)</script>", body, re.DOTALL)
    assert len(scripts) == 1 and b"new WebSocket" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0]).digest()).decode()
    csp = headers["Content-Security-Policy"]
    assert csp.endswith(f"; script-src 'self' 'sha256-{digest}'") and csp.count("script-src") == 1
