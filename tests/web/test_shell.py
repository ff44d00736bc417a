"""PTY sessions: output stops being read while paused (a browser that does not read costs the device
nothing but a blocked command), input beyond the bound is refused, exit codes and hang-up."""

from __future__ import annotations

import asyncio

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


def test_browser_store_refuses_a_malformed_file_with_its_name(tmp_path) -> None:
    import pytest

    from discretpeer.web.browsers import BrowserStore

    store = BrowserStore(tmp_path / "web_browsers.json")
    assert store.load() == []
    for text in ("{", "[]", '{"browsers": [{"pub": "!!"}]}', '{"browsers": [1]}'):
        store.path.write_text(text)
        with pytest.raises(ValueError, match="web_browsers.json"):
            store.load()
