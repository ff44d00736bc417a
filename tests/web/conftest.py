"""Fixtures of the browser-shell tests: the beacon's web service, a device, headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from beacon.web import WebOptions, WebService
from discretpeer.identity import Identity
from discretpeer.web.browsers import BrowserStore
from discretpeer.web.device import WebDevice

from .chromium import CHROMIUM, Chromium

PROMPT = "dp$ "
SHELL = ["/bin/sh", "-c", f"PS1='{PROMPT}' exec /bin/sh -i"]


@pytest.fixture
async def web_service() -> AsyncIterator[WebService]:
    service = WebService(WebOptions(host="127.0.0.1", port=0))
    await service.start()
    yield service
    await service.stop()


@contextlib.asynccontextmanager
async def running_device(
    service: WebService,
    path: Path,
    name: str = "testbox",
    *,
    url: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebDevice]:
    # aioice keeps one mDNS responder (and its asyncio.Lock) per process, bound to the first event
    # loop: a device runs one loop, but pytest gives each test its own, so start each from scratch
    import aioice.ice

    for attr in ("lock", "protocol", "subscribers"):
        with contextlib.suppress(AttributeError):
            delattr(aioice.ice._mdns, attr)
    if url is None:
        assert service.address is not None
        host, port = service.address
        url = f"ws://{host}:{port}/ws"
    device = WebDevice(url, Identity.generate(), BrowserStore(path), name=name, command=SHELL, ssl_context=ssl_context)
    task = asyncio.ensure_future(device.run())
    await asyncio.wait_for(device.connected.wait(), 10)
    try:
        yield device
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await device.stop()


@pytest.fixture
async def device(web_service: WebService, tmp_path: Path) -> AsyncIterator[WebDevice]:
    async with running_device(web_service, tmp_path / "browsers.json") as dev:
        yield dev


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: scripts/test.sh installs the Debian packages chromium, chromium-driver")
    chrome = Chromium()
    try:
        await chrome.start()
        yield chrome
    finally:
        await chrome.close()


def page_url(service: WebService, fragment: str = "") -> str:
    assert service.address is not None
    host, port = service.address
    return f"http://{host}:{port}/{fragment}"
