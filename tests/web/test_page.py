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
