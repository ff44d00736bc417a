"""A real headless Chromium pairs with a device by short code and gets a shell over WebRTC (loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from discretpeer.web.shell import PtySession

from .conftest import PROMPT, page_url

pytestmark = pytest.mark.alone  # times asserted, Chromium

READY = "window.dp && window.dp.state.status === 'ready'"


async def _pair(browser, service, device) -> None:
    await browser.navigate(page_url(service))
    await browser.wait_for(READY)
    code = device.invite()
    assert await browser.eval(f"dp.pair({code!r})"), await browser.eval("dp.state.status")


async def _foreground_is(shell: PtySession, name: str, timeout: float = 5.0) -> None:
    """Wait until the process group in the foreground of the shell's terminal is the command ``name``."""
    deadline = time.monotonic() + timeout
    while True:
        group = os.tcgetpgrp(shell.master)  # the terminal's foreground group, read on its master side
        with contextlib.suppress(OSError):
            if Path(f"/proc/{group}/comm").read_text().strip() == name:
                return
        assert time.monotonic() < deadline, f"{name} never took the terminal's foreground"
        await asyncio.sleep(0.02)


async def test_pair_open_shell_echo(web_service, device, browser) -> None:
    await _pair(browser, web_service, device)
    assert await browser.eval("dp.state.devices") == ["testbox"]
    assert len(device.store.load()) == 1
    assert await browser.eval("dp.open(0)"), await browser.eval("dp.state.status")
    await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
    await browser.type_text("echo hello-$((6*7))\r")
    await browser.wait_for("dp.terminalText().includes('hello-42')")
    assert await browser.eval("dp.state.bound")
    assert await browser.eval("dp.state.path") in ("direct", "")  # loopback: host candidates, never relay


async def test_reopen_page_prompt_and_keystroke_latency(web_service, device, browser) -> None:
    """Page opened (already paired) -> prompt, and keystroke -> echo: printed for the report."""
    await _pair(browser, web_service, device)
    started = time.monotonic()
    await browser.navigate(page_url(web_service, "?again#open=0"))
    await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
    open_seconds = time.monotonic() - started
    echoes = []
    for i in range(10):
        marker = f"k{i}z"
        t0 = time.monotonic()
        await browser.type_text(marker)
        await browser.wait_for(f"dp.terminalText().includes({marker!r})")
        echoes.append(time.monotonic() - t0)
        await browser.type_text("\x15")  # ^U: clear the line
    echoes.sort()
    print(f"page open -> prompt {open_seconds * 1000:.0f} ms; keystroke -> echo p50 {echoes[5] * 1000:.1f} ms")
    assert open_seconds < 5
    assert echoes[5] < 0.5


async def test_ctrl_c_resize_and_exit(web_service, device, browser) -> None:
    await _pair(browser, web_service, device)
    assert await browser.eval("dp.open(0)"), await browser.eval("dp.state.status")
    await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
    await browser.type_text("echo sle''eping; sleep 30\r")
    await browser.wait_for("dp.terminalText().includes('sleeping')")
    # the shell prints before it forks sleep, and a ^C that comes before sleep owns the terminal
    # interrupts only the shell, which then waits the full 30 s for sleep
    (shell,) = [shell for session in device.sessions.values() for shell in session.shells]
    await _foreground_is(shell, "sleep")
    await browser.type_text("\x03")  # Ctrl-C through xterm, the data channel and the PTY's line discipline
    await browser.type_text("echo after-$((1+1))\r")
    await browser.wait_for("dp.terminalText().includes('after-2')", timeout=5)
    await browser.call("Emulation.setDeviceMetricsOverride", width=640, height=360, deviceScaleFactor=1, mobile=False)
    await browser.wait_for("dp.term.cols < 80")
    await asyncio.sleep(0.3)  # the window may fire more than one resize: let it settle
    await browser.type_text("stty size\r")
    # the PTY's size, as the shell sees it, is the terminal's size on the page
    reported = await browser.wait_for("(dp.terminalText().match(/^(\\d+) (\\d+)\\s*$/m) || [null]).slice(1)")
    assert [int(x) for x in reported] == await browser.eval("[dp.term.rows, dp.term.cols]")
    shells = [shell for session in device.sessions.values() for shell in session.shells]
    assert len(shells) == 1 and not shells[0].exited
    await browser.type_text("exit\r")
    await browser.wait_for("dp.state.exit === 0")
    assert shells[0].exited


async def test_two_browsers_two_shells_at_once(web_service, device, browser) -> None:
    from .chromium import Chromium

    other = Chromium()
    try:
        await other.start()
        await _pair(browser, web_service, device)
        await _pair(other, web_service, device)
        assert len(device.store.load()) == 2
        for b in (browser, other):
            assert await b.eval("dp.open(0)"), await b.eval("[dp.state.status, dp.state.marks]")
        for b in (browser, other):
            await b.wait_for(f"dp.terminalText().includes({PROMPT!r})")
        await browser.type_text("echo one-$$\r")
        await other.type_text("echo two-$$\r")
        one = await browser.wait_for("(dp.terminalText().match(/^one-(\\d+)/m) || [])[1]")
        two = await other.wait_for("(dp.terminalText().match(/^two-(\\d+)/m) || [])[1]")
        assert one != two  # two shells (two PTYs, two processes), one per browser
        assert len(device.sessions) == 2
    finally:
        await other.close()


async def test_a_browser_not_in_the_allow_list_is_refused_until_allowed(web_service, device, browser) -> None:
    """Paired (its meeting secret is kept) but not in the allow list: a clear refusal, then allowed."""
    allowed: set[bytes] = set()
    device.allowed = lambda: set(allowed)
    device.reload()
    await _pair(browser, web_service, device)
    (paired,) = device.store.load()
    assert not await browser.eval("dp.open(0)")
    assert "allow list" in await browser.eval("dp.state.status")
    assert device.refused["not_allowed"] == 1 and not device.sessions
    allowed.add(paired.public_key)
    device.reload()  # what SIGHUP does in `discretpeer web serve`
    assert await browser.eval("dp.open(0)"), await browser.eval("dp.state.status")
    await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
    allowed.clear()
    device.reload()  # removed: its open session is closed too
    await browser.wait_for("!dp.pc || ['closed', 'failed', 'disconnected'].includes(dp.pc.connectionState)")
