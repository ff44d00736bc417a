"""A shell (or any command) on a pseudo-terminal, read and written without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
from collections.abc import Callable, Sequence

__all__ = ["PtySession"]

READ_CHUNK = 16384
MAX_PENDING_INPUT = 65536  # bytes typed/pasted and not yet taken by the PTY; more is refused


def _default_signals() -> None:
    """In the child before exec: every signal at its default and none blocked.

    An ignored signal survives exec: Python ignores SIGPIPE and SIGXFSZ, and a device started in the
    background of a script (``&``) ignores SIGINT and SIGQUIT. Inherited, Ctrl-C would not stop a
    command in the browser's shell and ``yes | head`` would print write errors."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for number in signal.valid_signals():
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):  # numbers the kernel keeps for itself
                signal.signal(number, signal.SIG_DFL)


class PtySession:
    """``start()`` the command on a new PTY; ``on_output(bytes)`` gets its output, ``on_exit(code)`` once.

    Output is read only while ``resume_output()`` is in force: the caller pauses it when the browser is
    not reading (bounded memory: the command then blocks on its own terminal)."""

    def __init__(
        self,
        argv: Sequence[str],
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        *,
        cols: int = 80,
        rows: int = 24,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.on_output = on_output
        self.on_exit = on_exit
        self.size = (cols, rows)
        self.env = env
        self.master = -1
        self.pid = 0
        self.pending = bytearray()
        self._reading = False
        self._exited = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("TERM", "xterm-256color")
        pid, master = pty.fork()
        if pid == 0:  # child: the PTY is its controlling terminal, a session leader
            try:
                _default_signals()
                os.execvpe(self.argv[0], self.argv, env)
            finally:
                os._exit(127)
        self.pid, self.master = pid, master
        os.set_blocking(master, False)
        self.resize(*self.size)
        self.resume_output()
        self._loop.create_task(self._wait())

    async def _wait(self) -> None:
        # poll with WNOHANG (no thread per session): quickly once the terminal hung up, slowly before
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                break
            await asyncio.sleep(0.5 if self._reading else 0.02)
        # drain what the command wrote last (e.g. "logout"), then report
        with contextlib.suppress(OSError):
            while data := os.read(self.master, READ_CHUNK):
                self.on_output(data)
        self._finish(os.waitstatus_to_exitcode(status))

    def _finish(self, code: int) -> None:
        if self._exited:
            return
        self._exited = True
        self.pause_output()
        if self._loop is not None and self.pending:
            self._loop.remove_writer(self.master)
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.on_exit(code)

    @property
    def exited(self) -> bool:
        return self._exited

    def pause_output(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.master)
            self._reading = False

    def resume_output(self) -> None:
        if not self._reading and not self._exited and self._loop is not None:
            self._loop.add_reader(self.master, self._readable)
            self._reading = True

    def _readable(self) -> None:
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the command closed its terminal
            self.pause_output()
            return
        if data:
            self.on_output(data)
        else:
            self.pause_output()

    def write(self, data: bytes) -> bool:
        """Queue keystrokes; False (and nothing queued) if more than MAX_PENDING_INPUT would wait."""
        if self._exited:
            return False
        if len(self.pending) + len(data) > MAX_PENDING_INPUT:
            return False
        was_empty = not self.pending
        self.pending += data
        if was_empty:
            self._writable()
        return True

    def _writable(self) -> None:
        assert self._loop is not None
        try:
            sent = os.write(self.master, self.pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.pending.clear()
            self._loop.remove_writer(self.master)
            return
        del self.pending[:sent]
        if self.pending:
            self._loop.add_writer(self.master, self._writable)
        else:
            self._loop.remove_writer(self.master)

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = max(1, min(cols, 1000)), max(1, min(rows, 1000))
        self.size = (cols, rows)
        if self.master >= 0 and not self._exited:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        """Hang up: SIGHUP to the command's process group (as a closed terminal does), then SIGKILL."""
        if self.pid and not self._exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGHUP)
            if self._loop is not None:
                self._loop.call_later(2.0, self._kill)

    def _kill(self) -> None:
        if not self._exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
