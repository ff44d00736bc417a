"""Headless Chromium driven over the DevTools protocol (websockets), for the browser-shell tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from tests.support.processes import stop_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


class Chromium:
    """One headless Chromium with a fresh profile; ``page`` is its first tab's DevTools session."""

    def __init__(self, extra: list[str] | None = None, prefix: list[str] | None = None) -> None:
        assert CHROMIUM, "chromium is not installed (scripts/test.sh installs it)"
        self.profile = Path(tempfile.mkdtemp(prefix="dp-chromium-"))
        self.proc = subprocess.Popen(
            [*(prefix or []), CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", *(extra or []), "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ws: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []

    async def start(self, timeout: float = 20.0) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        url = ""
        while not url:
            with contextlib.suppress(OSError, ValueError):
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2).read())
                url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            if not url:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium has no page target")
                await asyncio.sleep(0.05)
        self.ws = await websockets.connect(url, max_size=None)
        self._reader = asyncio.ensure_future(self._read())
        await self.call("Runtime.enable")

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message and message["id"] in self._pending:
                self._pending.pop(message["id"]).set_result(message)
            elif message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in args))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(message["params"]["exceptionDetails"])[:500])

    async def call(self, method: str, **params: Any) -> Any:
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):
                value = await self.eval(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                status = await self.eval("window.dp && window.dp.state.status")
                screen = await self.eval("window.dp && dp.terminalText && dp.terminalText().trimEnd().slice(-300)")
                raise TimeoutError(
                    f"waited {timeout} s for {expression} (page status: {status!r}; console: {self.console[-5:]};"
                    f" terminal ends with: {screen!r})"
                )
            await asyncio.sleep(0.02)

    async def type_text(self, text: str) -> None:
        """Type into the focused element as a user would: one key event per character (Enter for \\r)."""
        for char in text:
            if char == "\r":
                params = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"}
            elif ord(char) < 32:  # control characters: Ctrl+letter
                letter = chr(ord(char) + 64)
                params = {
                    "key": letter.lower(),
                    "code": f"Key{letter}",
                    "windowsVirtualKeyCode": ord(letter),
                    "modifiers": 2,
                }
            else:
                params = {"key": char, "text": char}
            await self.call("Input.dispatchKeyEvent", type="keyDown", **params)
            await self.call("Input.dispatchKeyEvent", type="keyUp", **{k: v for k, v in params.items() if k != "text"})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        stop_process(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)
