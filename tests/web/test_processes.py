"""The README's path with real processes: `python -m beacon` with the page enabled, `discretpeer web
serve` and `discretpeer invite --browser` on the device, a headless Chromium that pairs and gets a
shell - and is refused once removed from the config's [peers] and allow (then SIGHUP)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from tests.support.processes import stop_async_process

from .chromium import Chromium
from .conftest import PROMPT, SHELL

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _line(proc: asyncio.subprocess.Process, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    async def find() -> re.Match[str]:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"process ended before printing {pattern!r}")

    return await asyncio.wait_for(find(), timeout)


async def pair_browser(browser: Chromium, page: str, invite: asyncio.subprocess.Process) -> None:
    """The browser opens the beacon's ``page`` and pairs with the code ``invite`` printed; ``invite`` then exits 0."""
    code = (await _line(invite, r"pairing code: (\S+)")).group(1)
    await browser.start()
    await browser.navigate(page)
    await browser.wait_for("window.dp && window.dp.state.status === 'ready'")
    assert await browser.eval(f"dp.pair({code!r})"), await browser.eval("dp.state.status")
    assert await asyncio.wait_for(invite.wait(), 10) == 0


async def test_beacon_page_serve_invite_and_shell(tmp_path: Path) -> None:
    web_port = _free_port()
    beacon_dir = tmp_path / "beacon"
    beacon_dir.mkdir()
    (beacon_dir / "Beacon.conf.toml").write_text(
        'host = "127.0.0.1"\nport = 0\nipv6_enabled = false\n'
        f'web_enabled = true\nweb_host = "127.0.0.1"\nweb_port = {web_port}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCRETPEER_") and k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        procs.append(proc)
        return proc

    browser = Chromium()
    try:
        beacon = await start("-m", "beacon", "--dir", str(beacon_dir))
        page = (await _line(beacon, r"web page on (http://\S+)")).group(1)
        url = page.replace("http://", "ws://") + "ws"
        command = " ".join(SHELL[:2]) + f' "{SHELL[2]}"'
        serve = await start(
            "-m", "discretpeer.cli", "web", "serve", "--url", url, "--name", "pibox", "--command", command
        )
        await _line(serve, r"answering paired browsers")
        invite = await start("-m", "discretpeer.cli", "invite", "--browser", "--url", url, "--name", "my-phone")
        await pair_browser(browser, page, invite)
        assert await browser.eval("dp.state.devices") == [socket.gethostname()[:64]]  # as `invite` names itself
        config_path = tmp_path / "home" / ".config" / "discretpeer" / "config.toml"
        config = tomllib.loads(config_path.read_text())
        browser_id = config["peers"]["my-phone"]
        assert config["allow"] == ["my-phone"] and len(browser_id) == 52  # a peer id, as for a machine
        await asyncio.sleep(1.5)  # serve re-reads the paired browsers (and the allow list) when one pairs
        assert await browser.eval("dp.open(0)"), await browser.eval("dp.state.status")
        await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
        await browser.type_text("echo from-$((6*7))-processes\r")
        await browser.wait_for("dp.terminalText().includes('from-42-processes')")
        await browser.type_text("exit\r")
        await browser.wait_for("dp.state.exit === 0")

        # `web invite` still works: the same pairing (there --name is the device's name, as for
        # serve), here with the signalling URL from the config file (web_url) instead of --url
        config_path.write_text(tomli_w.dumps({**tomllib.loads(config_path.read_text()), "web_url": url}))
        other = Chromium()
        try:
            alias = await start("-m", "discretpeer.cli", "web", "invite", "--name", "pibox")
            await pair_browser(other, page, alias)
            assert await other.eval("dp.state.devices") == ["pibox"]
            config = tomllib.loads(config_path.read_text())
            assert len(config["peers"]) == 2 and len(config["allow"]) == 2
        finally:
            await other.close()

        # removed from the allow list + SIGHUP (as for expose): refused from then on
        config_path.write_text(tomli_w.dumps({"peers": {}, "allow": []}))
        serve.send_signal(signal.SIGHUP)
        await _line(serve, r"reloaded: 0 paired browser")
        assert not await browser.eval("dp.open(0)")
        assert "allow list" in await browser.eval("dp.state.status")
    finally:
        await browser.close()
        for proc in reversed(procs):
            await stop_async_process(proc)
    log = (beacon_dir / "logs" / "beacon.log").read_text() if (beacon_dir / "logs" / "beacon.log").exists() else ""
    assert "Traceback" not in log


async def test_beacon_serves_the_page_on_its_tls_port_with_the_domain_certificate(tmp_path: Path) -> None:
    """`python -m beacon` with web_certificate and no web_port: the page on the TLS/TCP port, peers pinned."""
    import ssl
    import urllib.request

    from discretpeer.beacon_tcp import open_channel

    from .domain_certs import make_domain_certificate

    domain = make_domain_certificate(tmp_path / "domain")
    beacon_dir = tmp_path / "beacon"
    beacon_dir.mkdir()
    (beacon_dir / "Beacon.conf.toml").write_text(
        'host = "127.0.0.1"\nport = 0\nipv6_enabled = false\nweb_enabled = true\n'
        f'web_certificate = "{domain.fullchain}"\nweb_private_key = "{domain.private_key}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCRETPEER_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    beacon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "beacon",
        "--dir",
        str(beacon_dir),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        fingerprint = (await _line(beacon, r"certificate hash: (\S+)")).group(1)
        port = int((await _line(beacon, r"tls over tcp on 127\.0\.0\.1:(\d+)")).group(1))
        page = (await _line(beacon, r"web page on (https://\S+)")).group(1)
        assert page == f"https://localhost:{port}/"
        context = ssl.create_default_context(cafile=str(domain.ca))

        def fetch() -> bytes:
            with urllib.request.urlopen(page, context=context, timeout=5) as response:
                return response.read()

        assert b"discretpeer" in await asyncio.to_thread(fetch)
        channel = await open_channel("127.0.0.1", port, fingerprint)  # the pin holds on the same port
        channel.close()
    finally:
        beacon.terminate()
        assert await asyncio.wait_for(beacon.wait(), 10) == 0
