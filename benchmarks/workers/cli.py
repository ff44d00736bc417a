"""Run ``discretpeer`` (the CLI) with benchmark variants applied: ``python -m
benchmarks.workers.cli [--coalesce ...] -- expose ...``. Without variant flags it is the CLI as
shipped. Its stdout/stderr are the CLI's own; the deadline still applies."""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import arm_deadline
from benchmarks.variants import add_variant_flags, apply_variant, tune_cli_peers


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--deadline", type=float, default=600.0)
    add_variant_flags(parser)
    args = parser.parse_args(argv[:split])
    arm_deadline(args.deadline)
    tune_cli_peers(apply_variant(args))
    import discretpeer.cli as cli

    if args.uvloop:
        import uvloop

        cli._run = uvloop.run  # type: ignore[attr-defined]  # patched for this benchmark
    return cli.main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
