"""The ``discretpeer`` command's entry point (and ``python -m discretpeer``, ``python -m discretpeer.cli``).

Ctrl-C while the command is still importing (~0.3 s) exits 130 without a traceback, as it does
once the command runs; the CLI installs its own handling after that."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(130)


def _forget_escaped_interrupt() -> None:
    """Python 3.11 remembers a KeyboardInterrupt that ended code run from a string (``exec`` of
    the methods a dataclass or namedtuple generates, while a module is imported) even when a
    caller caught it; under ``python -m`` the interpreter then kills itself with SIGINT at exit
    (status -2, no message) instead of exiting with our 130. Running a string that ends normally
    clears that memory."""
    exec("None", {})


def main() -> int:
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    from discretpeer.cli import main as cli_main

    signal.signal(signal.SIGINT, previous)
    try:
        return cli_main()
    except KeyboardInterrupt:  # before the command's own handling (argument parsing, lazy imports)
        return 130
    finally:
        _forget_escaped_interrupt()


if __name__ == "__main__":
    sys.exit(main())
