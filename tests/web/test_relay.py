"""Relay through a real coturn (use-auth-secret): the beacon hands the browser (and the device)
time-limited TURN credentials; with the browser restricted to relay candidates the shell still works."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from beacon.web import WebOptions, WebService
from tests.support.processes import stop_process

from .conftest import PROMPT, page_url, running_device

SECRET = "lab-turn-secret"
BEACON_SECRET = SECRET  # the beacon signs credentials with coturn's secret


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn is not installed: scripts/test.sh installs the Debian package coturn")
    port = _free_udp_port()
    log = tmp_path / "turn.log"
    proc = subprocess.Popen(
        [
            binary,
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            "--min-port=49152",
            "--max-port=65535",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=discretpeer.test",
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-stdout-log",
            "--simple-log",
            f"--log-file={log}",
            "--pidfile=" + str(tmp_path / "turn.pid"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
async def turn_service(coturn: int) -> AsyncIterator[WebService]:
    service = WebService(
        WebOptions(
            host="127.0.0.1", port=0, turn_secret=BEACON_SECRET, turn_urls=(f"turn:127.0.0.1:{coturn}?transport=udp",)
        )
    )
    await service.start()
    yield service
    await service.stop()


async def test_shell_through_coturn(turn_service, browser, tmp_path: Path) -> None:
    async with running_device(turn_service, tmp_path / "browsers.json") as device:
        await browser.navigate(page_url(turn_service))
        await browser.wait_for("window.dp && window.dp.state.status === 'ready'")
        assert await browser.eval(f"dp.pair({device.invite()!r})"), await browser.eval("dp.state.status")
        assert await browser.eval("dp.open(0, {relay: true})"), await browser.eval("dp.state.status")
        await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
        await browser.type_text("echo relayed-$((6*7))\r")
        await browser.wait_for("dp.terminalText().includes('relayed-42')")
        await browser.wait_for("dp.state.path === 'relay'", timeout=5)
        candidates = await browser.eval(
            "dp.pc.getStats().then(s => [...s.values()].filter(x => x.type === 'local-candidate')"
            ".map(x => x.candidateType))"
        )
        assert set(candidates) == {"relay"}
