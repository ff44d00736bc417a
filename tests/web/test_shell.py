"""PTY sessions: output stops being read while paused (a browser that does not read costs the device
nothing but a blocked command), input beyond the bound is refused, exit codes and hang-up."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from discretpeer.web.shell import MAX_PENDING_INPUT, PtySession


async def test_paused_output_is_not_read_and_resumes() -> None:
    received = bytearray()
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    session = PtySession(["yes", "discretpeer"], received.extend, exited.set_result)
    session.start()
    try:
        while len(received) < 100_000:
            await asyncio.sleep(0.01)
        session.pause_output()
        await asyncio.sleep(0.05)
        frozen = len(received)
        await asyncio.sleep(0.3)
        assert len(received) == frozen  # `yes` blocks on its full terminal; nothing piles up here
        session.resume_output()
        while len(received) < frozen + 100_000:
            await asyncio.sleep(0.01)
    finally:
        session.close()
    assert await asyncio.wait_for(exited, 5) != 0  # hung up


async def test_input_is_bounded_and_exit_code_reported() -> None:
    received = bytearray()
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    # a command that reads nothing: its terminal's input queue fills, then ours
    session = PtySession(["sh", "-c", "sleep 2; exit 3"], received.extend, exited.set_result)
    session.start()
    chunk = b"x" * 4096
    accepted = 0
    while session.write(chunk):
        accepted += len(chunk)
        assert accepted < 10 * MAX_PENDING_INPUT
    assert len(session.pending) <= MAX_PENDING_INPUT
    assert await asyncio.wait_for(exited, 10) == 3
    assert not session.write(b"late")


async def _run(argv: list[str]) -> tuple[str, int]:
    received = bytearray()
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    session = PtySession(argv, received.extend, exited.set_result)
    session.start()
    try:
        code = await asyncio.wait_for(exited, 10)
    finally:
        session.close()
    return received.decode(errors="replace"), code


async def test_the_command_gets_default_signals_whatever_the_device_ignores_or_blocks() -> None:
    """A device started with ``&`` from a script ignores SIGINT and SIGQUIT, and Python ignores
    SIGPIPE: none of that may reach the shell (Ctrl-C would not stop a command in the browser)."""
    ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
    before = {number: signal.signal(number, signal.SIG_IGN) for number in ignored}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's own, at start-up
        text, code = await _run(["grep", "^Sig\\(Ign\\|Blk\\)", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for number, handler in before.items():
            signal.signal(number, handler)
    assert code == 0, text
    masks = {name: value.strip() for name, value in (line.split(":") for line in text.splitlines() if line)}
    assert masks == {"SigBlk": "0000000000000000", "SigIgn": "0000000000000000"}, text


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def test_ctrl_c_stops_a_foreground_command_of_a_device_that_ignores_sigint() -> None:
    received = bytearray()
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `discretpeer web serve &`
    try:
        session = PtySession(
            ["sh", "-c", "yes | head -c 3 >/dev/null; echo piped-$?; exec sleep 30"],
            received.extend,
            exited.set_result,
        )
        session.start()
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        deadline = time.monotonic() + 5
        while _command(session.pid) != "sleep":  # the shell printed, then became sleep
            assert time.monotonic() < deadline, bytes(received)
            await asyncio.sleep(0.02)
        started = time.monotonic()
        session.write(b"\x03")  # the terminal's interrupt character: SIGINT to the foreground group
        code = await asyncio.wait_for(exited, 10)
    finally:
        session.close()
    assert time.monotonic() - started < 5
    assert code != 0
    assert b"piped-0" in received  # `yes` died of SIGPIPE quietly, no "Broken pipe" error
    assert b"Broken pipe" not in received


def test_browser_store_refuses_a_malformed_file_with_its_name(tmp_path) -> None:
    import pytest

    from discretpeer.web.browsers import BrowserStore

    store = BrowserStore(tmp_path / "web_browsers.json")
    assert store.load() == []
    for text in ("{", "[]", '{"browsers": [{"pub": "!!"}]}', '{"browsers": [1]}'):
        store.path.write_text(text)
        with pytest.raises(ValueError, match="web_browsers.json"):
            store.load()
