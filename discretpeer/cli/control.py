"""The local control endpoint of a running ``expose`` (or ``forward --control``): a unix socket (mode 0600, in a 0700
directory), one JSON request line in, one JSON answer line out.

    {"cmd": "status"}   ->   {"ok": true, "status": {...}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from discretpeer.tasks import wait_for

MAX_REQUEST = 4096
MAX_ANSWER = 16 * 1024 * 1024
MAX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
REQUEST_TIMEOUT = 2.0


class ControlError(Exception):
    """The control endpoint cannot be used (none running, permissions, bad answer)."""


def _check_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_PATH:
        raise ControlError(
            f"control socket path is too long ({len(os.fsencode(path))} bytes, limit {MAX_PATH}): "
            f"{path}; choose a shorter one with --control"
        )


class ControlServer:
    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        _check_path(self.path)
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ControlError(f"cannot create {directory}: {exc.strerror or exc}") from None
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(f"{self.path} exists and is not a socket; remove it or use --control")
            if await _alive(self.path):
                raise ControlError(
                    f"another discretpeer expose/forward is running (control socket {self.path}); "
                    "stop it or give this one another --control path"
                )
            self.path.unlink()  # stale: nobody answers there
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=MAX_REQUEST)
        except OSError as exc:
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _same_user(writer):
                return
            try:
                line = await wait_for(reader.readline(), REQUEST_TIMEOUT)
                request = json.loads(line)
                command = request.get("cmd") if isinstance(request, dict) else None
            except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                answer: dict[str, Any] = {"ok": False, "error": "bad request: send one JSON line"}
            else:
                if command == "status":
                    answer = {"ok": True, "status": self._snapshot()}
                else:
                    answer = {"ok": False, "error": f"unknown command {command!r} (known: status)"}
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


async def _alive(path: Path) -> bool:
    try:
        _, writer = await wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def query(path: Path, command: str = "status", timeout: float = 3.0) -> dict[str, Any]:
    """Ask the expose behind ``path``; raises ControlError with a one-line reason."""
    try:
        reader, writer = await wait_for(asyncio.open_unix_connection(str(path), limit=MAX_ANSWER), timeout)
    except FileNotFoundError:
        raise ControlError(
            f"no running expose (or forward --control): {path} does not exist "
            "(start `discretpeer expose`, or give its --control path)"
        ) from None
    except ConnectionRefusedError:
        raise ControlError(
            f"no running expose (or forward --control): nobody answers on {path} (stale socket)"
        ) from None
    except PermissionError:
        raise ControlError(f"cannot open {path}: permission denied (run as the user of the expose)") from None
    except (TimeoutError, OSError) as exc:
        raise ControlError(f"cannot reach the expose at {path}: {exc}") from None
    try:
        writer.write(json.dumps({"cmd": command}).encode() + b"\n")
        await writer.drain()
        line = await wait_for(reader.readline(), timeout)
    except (TimeoutError, OSError, ValueError) as exc:
        raise ControlError(f"the expose at {path} did not answer: {exc or type(exc).__name__}") from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError(f"the expose at {path} sent an unreadable answer") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ControlError(f"the expose at {path} refused: {error or 'no reason'}")
    result = answer.get(command)
    if not isinstance(result, dict):
        raise ControlError(f"the expose at {path} sent an answer without {command!r}")
    return result
