"""``discretpeer invite`` and ``discretpeer accept CODE``: pair two machines with a short code
instead of copying 52-character peer ids (the exchange itself: :mod:`.pairing`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Coroutine
from typing import Any

from discretpeer.config import ConfigError
from discretpeer.connection import PeerConnection
from discretpeer.errors import ConnectError
from discretpeer.tasks import wait_for

from .config_edit import add_peer
from .output import Console, short_id
from .pairing import (
    HEADER,
    Code,
    MessageType,
    PairingError,
    Pake,
    WrongCode,
    check_name,
    decode_header,
    encode,
    new_code,
    parse_code,
    suggested_name,
)
from .session import Progress, make_peer, open_identity, require_meeting_place, unless_pins_fail
from .settings import Settings

EXCHANGE_TIMEOUT = 15.0
DEFAULT_VALID = 300.0


async def _read(reader: asyncio.StreamReader, expect: tuple[MessageType, ...]) -> tuple[MessageType, bytes]:
    try:
        kind, length = decode_header(await reader.readexactly(HEADER.size))
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise PairingError("the other side closed the exchange") from None
    if kind not in expect:
        raise PairingError(f"the other side sent {kind.name} where {' or '.join(e.name for e in expect)} was due")
    return kind, payload


def _my_name() -> str:
    """The name we suggest the other side saves us under (it may choose another with --name)."""
    return suggested_name(socket.gethostname())


def _save(settings: Settings, console: Console, name: str, peer_id: str, *, inviter: bool) -> int:
    path = settings.config_target
    used, changed = add_peer(path, name, peer_id)
    what = "added to" if changed else "already in"
    console.result(
        f"paired with {used} ({peer_id}): {what} allow and [peers] in {path}"
        + ("; a running expose applies it after SIGHUP (systemctl reload discretpeer-expose)" if changed else ""),
        event="paired",
        peer=peer_id,
        name=used,
        config=str(path),
        changed=changed,
        inviter=inviter,
    )
    return 0


async def _connect(peer: Any, settings: Settings, console: Console, code: Code, timeout: float) -> PeerConnection:
    progress = Progress(peer, console, settings=settings)
    progress.start()
    try:
        return await unless_pins_fail(peer, settings, peer.connect(code.meeting, expect=None, timeout=timeout))
    finally:
        await progress.stop()


async def run_invite(settings: Settings, args: Any, console: Console) -> int:
    if getattr(args, "browser", False):
        from .web import run_browser_invite

        return await run_browser_invite(settings, args, console)
    if getattr(args, "url", None):
        raise ConfigError("--url is for --browser (pairing a web browser)")
    try:
        name = check_name(args.name) if args.name else None
    except PairingError as exc:
        raise ConfigError(str(exc)) from None
    require_meeting_place(settings)
    identity = open_identity(settings, console)
    code = new_code()
    valid = float(args.valid)
    async with make_peer(settings, identity) as peer:
        minutes = f"{valid / 60:g} minutes" if valid >= 60 else f"{valid:g} seconds"
        if console.json:
            console.result(
                f"invitation code {code}", event="invite", code=str(code), valid_seconds=valid, peer_id=peer.peer_id
            )
        else:
            print(str(code), flush=True)  # stdout: the code alone (scripts read it)
            console.status(
                f"invitation code {code} (valid {minutes}, one use); on the other machine run: "
                f"discretpeer accept {code} [--name NAME]",
                event="waiting",
            )
        deadline = time.monotonic() + valid
        try:
            conn = await _connect(peer, settings, console, code, valid)
        except ConnectError:
            console.error(f"invitation {code} expired: nobody accepted it within {minutes}", event="expired")
            return 1
        console.status(f"{short_id(conn.peer_id)} answered: checking the code", event="checking", peer=conn.peer_id)
        return await _exchange_and_save(
            settings,
            console,
            conn,
            _as_inviter(conn, code, peer.peer_id, _my_name()),
            max(EXCHANGE_TIMEOUT, deadline - time.monotonic()),
            name,
            inviter=True,
            wrong_code=f"someone ({short_id(conn.peer_id)}) tried a wrong code: invitation {code} is used up, "
            "nothing was written; make a new one",
        )


async def _exchange_and_save(
    settings: Settings,
    console: Console,
    conn: PeerConnection,
    exchange: Coroutine[Any, Any, str],
    timeout: float,
    name: str | None,
    *,
    inviter: bool,
    wrong_code: str,
) -> int:
    """Run the code exchange (it returns the other side's name), then save the pairing; say what
    went wrong (nothing is written then). Returns the exit code."""
    try:
        their_name = await wait_for(exchange, timeout)
    except WrongCode:
        console.error(wrong_code, event="wrong_code", **({"peer": conn.peer_id} if inviter else {}))
        return 1
    except (PairingError, ConnectionError, TimeoutError) as exc:
        console.error(f"pairing failed, nothing was written: {exc or 'timed out'}", event="pairing_failed")
        return 1
    return _save(settings, console, name or suggested_name(their_name), conn.peer_id, inviter=inviter)


async def _as_inviter(conn: PeerConnection, code: Code, my_id: str, my_name: str) -> str:
    pake = Pake(code, inviter=True)
    reader, writer = await conn.accept_stream()
    try:
        _, hello = await _read(reader, (MessageType.HELLO,))
        writer.write(encode(MessageType.HELLO, pake.hello()))
        pake.finish(hello)
        _, confirm = await _read(reader, (MessageType.CONFIRM,))
        try:
            their_name = pake.check(confirm, my_id, conn.peer_id)
        except WrongCode:
            writer.write(encode(MessageType.REFUSED, b"wrong code"))
            await _end(conn, reader, writer)
            raise
        writer.write(encode(MessageType.CONFIRM, pake.confirm(my_id, conn.peer_id, my_name)))
        await _end(conn, reader, writer)
        return their_name
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


async def _end(conn: PeerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """End our side of the stream, wait for the other side's end (it read our last message), then close."""
    writer.write_eof()
    with contextlib.suppress(Exception):
        await wait_for(reader.read(), 5.0)
    with contextlib.suppress(Exception):
        await conn.aclose("pairing done", timeout=2.0)


async def run_accept(settings: Settings, args: Any, console: Console) -> int:
    try:
        code = parse_code(args.code)
        name = check_name(args.name) if args.name else None
    except PairingError as exc:
        raise ConfigError(str(exc)) from None
    require_meeting_place(settings)
    identity = open_identity(settings, console)
    async with make_peer(settings, identity) as peer:
        console.status(f"looking for the machine that invited with number {code.number}", event="connecting")
        try:
            conn = await _connect(peer, settings, console, code, settings.timeout)
        except ConnectError:
            console.error(
                f"nobody is waiting on invitation {code.number} (expired, already used, or a mistyped "
                "number); nothing was written",
                event="not_found",
            )
            return 1
        return await _exchange_and_save(
            settings,
            console,
            conn,
            _as_accepter(conn, code, peer.peer_id, _my_name()),
            EXCHANGE_TIMEOUT,
            name,
            inviter=False,
            wrong_code=f"wrong code: {code} does not match the invitation (it is now used up; ask for a new "
            "one); nothing was written",
        )


async def _as_accepter(conn: PeerConnection, code: Code, my_id: str, my_name: str) -> str:
    pake = Pake(code, inviter=False)
    reader, writer = await conn.open_stream()
    try:
        writer.write(encode(MessageType.HELLO, pake.hello()))
        _, hello = await _read(reader, (MessageType.HELLO,))
        pake.finish(hello)
        writer.write(encode(MessageType.CONFIRM, pake.confirm(my_id, conn.peer_id, my_name)))
        kind, payload = await _read(reader, (MessageType.CONFIRM, MessageType.REFUSED))
        if kind is MessageType.REFUSED:
            raise WrongCode(payload.decode("utf-8", "replace"))
        their_name = pake.check(payload, my_id, conn.peer_id)
        await _end(conn, reader, writer)
        return their_name
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
