"""Run ``discretpeer`` (the CLI) with benchmark variants applied: ``python -m
benchmarks.workers.cli [--no-coalesce ...] -- expose ...``. Without variant flags it is the CLI as
shipped; with them, the command gets the matching ``--tuning NAME=VALUE`` options (``--dgram N``:
``--max-datagram-size N``; ``--asyncio``: ``DISCRETPEER_LOOP=asyncio``). Its
stdout/stderr are the CLI's own; the deadline still applies."""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks.common import arm_deadline
from benchmarks.variants import add_variant_flags, tuning_options, variant_tuning


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--asyncio", action="store_true", help="DISCRETPEER_LOOP=asyncio (the CLI's default: uvloop)")
    add_variant_flags(parser)
    args = parser.parse_args(argv[:split])
    arm_deadline(args.deadline)
    if args.uvloop:
        import uvloop  # noqa: F401 - the CLI runs on uvloop when it is installed: --uvloop only insists on it
    import discretpeer.cli as cli

    if args.asyncio:
        os.environ["DISCRETPEER_LOOP"] = "asyncio"
    command = argv[split + 1 :]
    sized = [f"--max-datagram-size={args.dgram}"] if args.dgram else []
    return cli.main(command[:1] + sized + tuning_options(variant_tuning(args)) + command[1:])


if __name__ == "__main__":
    sys.exit(main())
