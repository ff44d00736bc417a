"""The ``discretpeer`` command's entry point (and ``python -m discretpeer``).

Ctrl-C while the command is still importing (~0.3 s) exits 130 without a traceback, as it does
once the command runs; the CLI installs its own handling after that."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(130)


def main() -> int:
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    from discretpeer.cli import main as cli_main

    signal.signal(signal.SIGINT, previous)
    try:
        return cli_main()
    except KeyboardInterrupt:  # before the command's own handling (argument parsing, lazy imports)
        return 130


if __name__ == "__main__":
    sys.exit(main())
