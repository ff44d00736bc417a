"""Structured logs of one beacon, without touching global logging or structlog configuration.

JSON lines go to ``logs/beacon.log`` (rotated by size, a few files kept); a human-readable line
goes to the console (stderr, so stdout stays free for the machine-readable start lines).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

LOG_FILE = "beacon.log"


class LogFileError(Exception):
    """``logs/beacon.log`` cannot be used; ``str()`` is one line naming the file and the problem."""


def _open_file_handler(path: Path, max_bytes: int, backup_count: int) -> logging.Handler:
    """The rotating handler for ``path``, or :class:`LogFileError`.

    A regular file, or a character device such as /dev/null (file logs off). A directory, FIFO
    or socket is refused before opening: appending to a FIFO without a reader blocks forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise LogFileError(f"{path}: {exc.strerror or exc}") from exc
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise LogFileError(f"{path}: cannot write the log ({kind}, expected a regular file)")
    try:
        return logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
    except OSError as exc:
        raise LogFileError(f"{path}: cannot write the log ({exc.strerror or exc})") from exc


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class BeaconLog:
    """Owns the handlers; ``log`` is the structlog logger to pass around. Call :meth:`close`.

    Raises :class:`LogFileError` when ``log_dir/beacon.log`` cannot be opened for appending."""

    def __init__(
        self,
        log_dir: Path | None = None,
        *,
        level: str = "info",
        max_bytes: int = 10 * 1024 * 1024,
        backup_count: int = 5,
        console: TextIO | None = sys.stderr,
    ) -> None:
        # A Logger built directly is not registered with logging's manager: no global state.
        self._logger = logging.Logger("discret-beacon", logging.DEBUG)
        self._logger.propagate = False
        self._handlers: list[logging.Handler] = []
        pre_chain: list[Any] = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso")]
        if log_dir is not None:
            handler = _open_file_handler(Path(log_dir) / LOG_FILE, max_bytes, backup_count)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        structlog.processors.JSONRenderer(),
                    ]
                )
            )
            self._handlers.append(handler)
        if console is not None:
            handler = logging.StreamHandler(console)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        _without_traceback,
                        structlog.dev.ConsoleRenderer(colors=False),
                    ]
                )
            )
            self._handlers.append(handler)
        for handler in self._handlers:
            self._logger.addHandler(handler)
        self.log: Any = structlog.wrap_logger(
            self._logger,
            processors=[*pre_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
            context_class=dict,
            cache_logger_on_first_use=False,
        ).bind()  # the concrete logger: a lazy proxy re-binds on every call (~15 us each), and
        # on the filtering logger a call below the level is then a no-op method

    def flush(self) -> None:
        for handler in self._handlers:
            handler.flush()

    def close(self) -> None:
        for handler in self._handlers:
            handler.flush()
            handler.close()
            self._logger.removeHandler(handler)
        self._handlers.clear()


def _without_traceback(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Console lines stay one line: tracebacks go to the log file only."""
    if event_dict.pop("exc_info", None):
        event_dict["see"] = "logs/beacon.log"
    return event_dict


def null_logger() -> Any:
    """A logger that drops everything (in-process beacons in tests)."""
    return BeaconLog(None, console=None, level="error").log
