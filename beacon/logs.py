"""Structured logs of one beacon, without touching global logging or structlog configuration.

JSON lines go to ``logs/beacon.log`` (rotated by size, a few files kept); a human-readable line
goes to the console (stderr, so stdout stays free for the machine-readable start lines).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import stat
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

LOG_FILE = "beacon.log"


class LogFileError(Exception):
    """``logs/beacon.log`` cannot be used; ``str()`` is one line naming the file and the problem."""


class _LogFile(logging.handlers.RotatingFileHandler):
    """A disk that fills up (or a file that cannot be written) while serving: one warning line
    per outage on the console instead of logging's traceback per record; the beacon keeps serving."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int, warn: TextIO | None) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self._warn = warn
        self._failing = False
        self._failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)  # calls handleError on failure
        if self._failing and not self._failed_now:
            self._failing = False
            self._say(f"{self.baseFilename}: writing the log again")

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed_now = True
        if not self._failing:
            self._failing = True
            error = sys.exc_info()[1]
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            self._say(f"{self.baseFilename}: cannot write the log ({reason}); logging to the console only")

    def _say(self, text: str) -> None:
        if self._warn is not None:
            try:
                self._warn.write(f"discret-beacon: warning: {text}\n")
                self._warn.flush()
            except (OSError, ValueError):
                pass


def _open_file_handler(path: Path, max_bytes: int, backup_count: int, warn: TextIO | None) -> logging.Handler:
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
        return _LogFile(path, max_bytes, backup_count, warn)
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
            handler = _open_file_handler(Path(log_dir) / LOG_FILE, max_bytes, backup_count, console or sys.stderr)
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
            with contextlib.suppress(OSError, ValueError):  # a full disk was reported when it happened
                handler.flush()

    def close(self) -> None:
        for handler in self._handlers:
            with contextlib.suppress(OSError, ValueError):
                handler.flush()
            with contextlib.suppress(OSError, ValueError):
                handler.close()
            self._logger.removeHandler(handler)
        self._handlers.clear()


def _without_traceback(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console lines stay one line: tracebacks go to the log file only."""
    if event_dict.pop("exc_info", None):
        event_dict["see"] = "logs/beacon.log"
    return event_dict


def null_logger() -> Any:
    """A logger that drops everything (in-process beacons in tests)."""
    return BeaconLog(None, console=None, level="error").log
