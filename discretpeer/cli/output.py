"""Where the CLI writes: logs and human lines on stderr, results (or JSON events) on stdout.

stdout is a data channel for ``pipe``: nothing but tunnel bytes may ever reach it there, so
logging (structlog and stdlib) is configured to write to stderr before anything else runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

PROG = "discretpeer"
# set when SIGINT ended a command that stops cleanly on signals: it then exits 130, as --help says
# (SIGTERM, what service managers send, is a normal stop: exit 0)
interrupted = False


def configure_logging(verbosity: int) -> None:
    """Every log goes to stderr. Default: quiet (the CLI's own lines say what matters); -v: the
    library's info and everyone's warnings; -vv: debug of everything."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    # modules that log through structlog directly: render to stderr, never stdout
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False, pad_event=0),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL if verbosity <= 0 else level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.ERROR if verbosity <= 0 else logging.WARNING if verbosity == 1 else logging.DEBUG)
    # library internals ("Future exception was never retrieved", a beacon retry) stay quiet by default
    for name in ("discretpeer", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL if verbosity <= 0 else level)
    logging.captureWarnings(True)


class Console:
    """Human status lines (stderr), or nothing (``quiet``), or JSON events (``json``).

    ``events`` is where JSON events go: stdout for most commands, stderr for ``pipe`` (whose
    stdout carries the tunnel). Errors are always one line on stderr (also a JSON event in json
    mode).
    """

    def __init__(self, *, quiet: bool = False, json_mode: bool = False, events: TextIO | None = None) -> None:
        self.quiet = quiet
        self.json = json_mode
        self._events = events
        self.before: Callable[[], None] | None = None  # e.g. flush pending progress lines first
        self._in_before = False

    def _flush_before(self) -> None:
        if self.before is not None and not self._in_before:
            self._in_before = True
            try:
                self.before()
            finally:
                self._in_before = False

    @property
    def events(self) -> TextIO:
        return self._events if self._events is not None else sys.stdout

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        try:
            self.events.write(json.dumps(record, default=str) + "\n")
            self.events.flush()
        except (OSError, ValueError):
            pass

    def status(self, text: str, event: str = "status", **fields: Any) -> None:
        """A progress line (connecting, punching, relay ...)."""
        self._flush_before()
        if self.json:
            self._emit(event, {"message": text, **fields})
        elif not self.quiet:
            _write_err(f"{PROG}: {text}")

    def result(self, text: str, event: str = "result", **fields: Any) -> None:
        """An outcome the user waits for (connected via ..., listening on ...): shown unless quiet."""
        self.status(text, event, **fields)

    def warn(self, text: str, event: str = "warning", **fields: Any) -> None:
        self._flush_before()
        if self.json:
            self._emit(event, {"message": text, **fields})
        elif not self.quiet:
            _write_err(f"{PROG}: warning: {text}")

    def error(self, text: str, event: str = "error", **fields: Any) -> None:
        self._flush_before()
        if self.json:
            self._emit(event, {"message": text, **fields})
        _write_err(f"{PROG}: error: {text}")


def _write_err(line: str) -> None:
    try:
        sys.stderr.write(line.replace("\n", " ") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def fail(text: str) -> None:
    """One error line on stderr (used before a Console exists)."""
    _write_err(f"{PROG}: error: {text}")


def short_id(peer_id: str) -> str:
    return f"{peer_id[:12]}..." if len(peer_id) > 15 else peer_id


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover
