"""``discretpeer web``: a shell on this device from a paired web browser (see discretpeer/web/).

discretpeer web serve --url wss://beacon.example.org/ws      # answer paired browsers (runs until ^C)
discretpeer web invite --url wss://beacon.example.org/ws     # print a one-time code, pair one browser
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

from discretpeer.config import ConfigError

from .output import Console
from .session import open_identity
from .settings import Settings, config_home

__all__ = ["add_parser", "run_web"]


def add_parser(sub: Any, add_base: Any, epilog: str) -> None:
    p = sub.add_parser(
        "web",
        help="a shell on this device from a paired web browser (WebRTC)",
        description="Let browsers paired with `web invite` open a shell on this device from the "
        "page the beacon serves (peer to peer over WebRTC; relayed by TURN when needed).",
        epilog=epilog,
    )
    p.add_argument("action", choices=["serve", "invite"], help="serve: answer paired browsers; invite: pair one")
    p.add_argument("--url", required=True, metavar="URL", help="the beacon's signalling WebSocket, wss://HOST/ws")
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
        help="paired browsers file (default ~/.config/discretpeer/"
        "web_browsers.json; `serve` re-reads it when it changes or on SIGHUP)",
    )
    p.add_argument(
        "--invite-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long `invite` waits for the browser (default 600)",
    )
    add_base(p)


async def run_web(settings: Settings, args: Any, console: Console) -> int:
    try:
        from discretpeer.web.browsers import BrowserStore
        from discretpeer.web.device import WebDevice
    except ImportError as exc:
        raise ConfigError(f"`discretpeer web` needs the 'web' extra: pip install 'discretpeer[web]' ({exc})") from None

    if not args.url.startswith(("ws://", "wss://")):
        raise ConfigError(f"--url must be ws:// or wss:// (got {args.url!r})")
    identity = open_identity(settings, console)
    store = BrowserStore(Path(args.browsers) if args.browsers else config_home() / "web_browsers.json")
    command = shlex.split(args.shell_command) if args.shell_command else [os.environ.get("SHELL") or "/bin/sh", "-l"]
    ctx = ssl.create_default_context() if args.url.startswith("wss://") else None
    device = WebDevice(args.url, identity, store, name=args.name[:64], command=command, ssl_context=ctx)
    runner = asyncio.ensure_future(device.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, device.reload)
    try:
        connected = asyncio.ensure_future(device.connected.wait())
        await asyncio.wait(
            [connected, asyncio.ensure_future(stop.wait())], timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if not device.connected.is_set():
            console.error(f"cannot reach the beacon's signalling at {args.url}")
            return 1
        if args.action == "invite":
            code = device.invite()
            console.result(
                f"pairing code: {code}  (type it into the page; valid for one attempt)", event="invite", code=code
            )
            waiter = asyncio.ensure_future(device.paired.wait())
            await asyncio.wait(
                [waiter, asyncio.ensure_future(stop.wait())],
                timeout=args.invite_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if device.paired.is_set():
                console.result("browser paired: `discretpeer web serve` lets it open shells", event="paired")
                return 0
            console.error(
                "no browser paired with that code"
                if not device.refused["pairing"]
                else "pairing failed (wrong code): the code is no longer valid"
            )
            return 1
        console.status(f"answering paired browsers as {args.name!r} ({len(store.load())} paired)", event="serving")
        await stop.wait()
        return 0
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await device.stop()
