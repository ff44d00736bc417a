"""``discretpeer web``: a shell on this device from a paired web browser (see discretpeer/web/).

discretpeer web serve --url wss://beacon.example.org/ws       # answer allowed browsers (runs until ^C;
                                                             # web_url in the config spares --url)
discretpeer invite --browser --url wss://beacon.example.org/ws  # print a one-time code, pair one browser

Browsers pair like peers: their Ed25519 key is their peer id, saved with a name in the config's
[peers] and allow; `serve` re-reads that allow list on SIGHUP (and when a browser pairs), as
`expose` does. ``web invite`` is the same as ``invite --browser`` (kept for old scripts).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

from discretpeer.config import ConfigError
from discretpeer.identity import decode_peer_id, encode_peer_id
from discretpeer.tasks import cancel_and_wait

from .config_edit import add_peer
from .output import Console
from .pairing import PairingError, check_name, suggested_name
from .session import open_identity
from .settings import Settings, config_home, load_settings

__all__ = ["add_parser", "run_web", "run_browser_invite"]


def add_parser(sub: Any, add_base: Any, epilog: str) -> None:
    p = sub.add_parser(
        "web",
        help="a shell on this device from a paired web browser (WebRTC)",
        description="Let browsers paired with `discretpeer invite --browser` (and in the config's "
        "allow list) open a shell on this device from the page the beacon serves (peer to peer over "
        "WebRTC; relayed by TURN when needed). `web invite` is the same as `invite --browser`.",
        epilog=epilog,
    )
    p.add_argument(
        "action", choices=["serve", "invite"], help="serve: answer allowed browsers; invite: = invite --browser"
    )
    p.add_argument(
        "--url", metavar="URL", help="the beacon's signalling WebSocket, wss://HOST/ws (default: web_url in the config)"
    )
    p.add_argument("--name", default=socket.gethostname(), help="the name browsers see (default: host name)")
    p.add_argument(
        "--command",
        dest="shell_command",
        metavar="CMD",
        default="",
        help="what each shell runs (default: $SHELL -l, else /bin/sh -l)",
    )
    p.add_argument(
        "--browsers",
        metavar="PATH",
        help="the paired browsers' meeting secrets (default ~/.config/discretpeer/"
        "web_browsers.json; who is allowed is the config's allow list)",
    )
    p.add_argument(
        "--invite-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long `invite` waits for the browser (default 600)",
    )
    add_base(p)


def _browser_store(args: Any) -> Any:
    from discretpeer.web.browsers import BrowserStore

    path = getattr(args, "browsers", None)
    return BrowserStore(Path(path) if path else config_home() / "web_browsers.json")


def _list_browser(settings: Settings, console: Console, browser: Any, name: str | None) -> None:
    """Put a newly paired browser in the config's [peers] and allow (before its secret is saved)."""
    peer_id = encode_peer_id(browser.public_key)
    used, changed = add_peer(settings.config_target, name or suggested_name(browser.name), peer_id)
    browser.listed = True
    console.result(
        f"browser paired as {used} ({peer_id}): {'added to' if changed else 'already in'} allow and [peers] "
        f"in {settings.config_target}",
        event="paired",
        peer=peer_id,
        name=used,
        config=str(settings.config_target),
        browser=True,
    )


def _migrate(settings: Settings, console: Console, store: Any) -> None:
    """Browsers of a paired-browsers file from before the allow list: add them to [peers], once."""
    try:
        old = [b for b in store.load() if not b.listed]
    except ValueError as exc:
        console.warn(str(exc))
        return
    for browser in old:
        used, _ = add_peer(settings.config_target, suggested_name(browser.name), encode_peer_id(browser.public_key))
        console.status(f"paired browser {browser.name!r} moved to the allow list as {used}", event="migrated")
    if old:
        store.mark_listed({b.public_key for b in old})


async def run_browser_invite(settings: Settings, args: Any, console: Console) -> int:
    """``discretpeer invite --browser`` (and ``web invite``)."""
    return await run_web(settings, args, console, invite=True)


async def run_web(settings: Settings, args: Any, console: Console, *, invite: bool = False) -> int:
    try:
        from discretpeer.web.device import WebDevice
    except ImportError as exc:
        raise ConfigError(f"`discretpeer web` needs the 'web' extra: pip install 'discretpeer[web]' ({exc})") from None

    url = getattr(args, "url", None) or settings.web_url
    if not url:
        where = str(settings.config_target)
        raise ConfigError(
            "browsers need the beacon's signalling WebSocket: --url wss://BEACON/ws, or "
            f'web_url = "wss://BEACON/ws" in {where}'
        )
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"--url must be ws:// or wss:// (got {url!r})")
    invite = invite or getattr(args, "action", "") == "invite"
    # `web invite --name` is the name browsers see (as for serve); `invite --browser --name` the
    # browser's name in [peers] (as for invite)
    peer_name = args.name if invite and getattr(args, "browser", False) else None
    device_name = (args.name if getattr(args, "action", "") else None) or socket.gethostname()
    try:
        peer_name = check_name(peer_name) if peer_name else None
    except PairingError as exc:
        raise ConfigError(str(exc)) from None
    identity = open_identity(settings, console)
    store = _browser_store(args)
    _migrate(settings, console, store)
    shell_command = getattr(args, "shell_command", "")
    command = shlex.split(shell_command) if shell_command else [os.environ.get("SHELL") or "/bin/sh", "-l"]
    ctx = ssl.create_default_context() if url.startswith("wss://") else None

    def allowed() -> set[bytes]:
        return {decode_peer_id(peer_id) for peer_id in load_settings(args).allow}

    device = WebDevice(
        url,
        identity,
        store,
        name=device_name[:64],
        command=command,
        ssl_context=ctx,
        allowed=allowed,
        on_paired=lambda browser: _list_browser(settings, console, browser, peer_name),
    )
    runner = asyncio.ensure_future(device.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(device, console))
    try:
        connected = asyncio.ensure_future(device.connected.wait())
        await asyncio.wait(
            [connected, asyncio.ensure_future(stop.wait())], timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if not device.connected.is_set():
            console.error(f"cannot reach the beacon's signalling at {url}")
            return 1
        if invite:
            code = device.invite()
            timeout = getattr(args, "invite_timeout", None) or getattr(args, "valid", None) or 600.0
            if not console.json:
                print(code, flush=True)  # stdout: the code alone (scripts read it), as `invite`
            console.result(
                f"pairing code: {code}  (type it into the page; valid for one attempt)", event="invite", code=code
            )
            waiter = asyncio.ensure_future(device.paired.wait())
            await asyncio.wait(
                [waiter, asyncio.ensure_future(stop.wait())],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if device.paired.is_set():
                console.status("a running `discretpeer web serve` lets it open shells now", event="done")
                return 0
            console.error(
                "no browser paired with that code"
                if not device.refused["pairing"]
                else "pairing failed (wrong code): the code is no longer valid; nothing was written"
            )
            return 1
        allowed_now = len({b.public_key for b in device.browsers.values()} & (device.allowed_keys or set()))
        console.status(
            f"answering paired browsers as {device_name!r} ({allowed_now} allowed); SIGHUP re-reads the allow list",
            event="serving",
        )
        await stop.wait()
        return 0
    finally:
        await cancel_and_wait(runner)
        await device.stop()


def _reload(device: Any, console: Console) -> None:
    device.reload()
    keys = device.allowed_keys or set()
    allowed_now = len({b.public_key for b in device.browsers.values()} & keys)
    console.result(f"reloaded: {allowed_now} paired browser(s) allowed", event="reloaded", browsers=allowed_now)
