"""``discretpeer``: reach any TCP service of a device behind NAT.

    discretpeer id                                   # this machine's peer id (created on first use)
    discretpeer expose 22 --allow PEER_ID            # on the device: offer its ssh to that peer
    discretpeer forward 2222 --to PEER_ID --port 22  # elsewhere: localhost:2222 -> device:22
    discretpeer pipe --to PEER_ID --port 22          # stdin/stdout (ssh ProxyCommand)
    discretpeer invite [--name NAME]                 # pair by a short code: prints 7-apple-river ...
    discretpeer accept CODE [--name NAME]            # ... on the other machine: both allow each other
    discretpeer ping PEER                            # round trips to a peer, and the path they take
    discretpeer doctor                               # beacons, public address, NAT, mDNS
    discretpeer status [--json] [--watch]            # what the running expose (or a forward) is doing
    discretpeer invite --browser --url wss://BEACON/ws  # pair a web browser (code typed into the page)
    discretpeer web serve --url wss://BEACON/ws      # a shell on this device for allowed browsers

Exit codes: 0 success, 1 failure (cannot connect, refused, doctor found a FAIL), 2 usage or
configuration error, 130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from discretpeer.config import ConfigError
from discretpeer.errors import ConnectError
from discretpeer.identity import IdentityError

from . import output
from .control import ControlError
from .output import PROG, Console, configure_logging, fail
from .settings import ENV_BEACONS, Settings, load_settings

__all__ = ["main", "build_parser"]

ENV_LOOP = "DISCRETPEER_LOOP"  # the event loop: auto (uvloop when installed), uvloop, asyncio

EPILOG = (
    "Settings come from the config file (~/.config/discretpeer/config.toml), then environment variables "
    "(DISCRETPEER_CONFIG, DISCRETPEER_IDENTITY, DISCRETPEER_BEACONS, DISCRETPEER_ALLOW, DISCRETPEER_LAN, "
    "DISCRETPEER_SECRET, DISCRETPEER_CONTROL), then flags. "
    "Exit codes: 0 ok, 1 failure, 2 usage/configuration error, 130 interrupted."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)")
        sys.exit(2)


class _Version(argparse.Action):
    """``--version``: the installed version, read only when asked (package metadata costs ~10 ms)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        import discretpeer

        print(f"{PROG} {discretpeer.__version__}")
        parser.exit(0)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def _remote_port(text: str) -> int:
    port = _port(text)
    if port == 0:
        raise argparse.ArgumentTypeError("the remote port must be 1..65535 (leave --port out for the default)")
    return port


def _count(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 100000:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (1..100000)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"seconds must be positive, got {text!r}")
    return value


def _add_base(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--config", metavar="PATH", help="config file (default ~/.config/discretpeer/config.toml)")
    group.add_argument(
        "--identity",
        metavar="PATH",
        help="identity key file (default ~/.config/discretpeer/identity.key; created mode 0600)",
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="library logs on stderr: -v info, -vv debug (and tracebacks)"
    )
    group.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    group.add_argument("--json", action="store_true", help="machine-readable output (JSON)")


def _add_network(parser: argparse.ArgumentParser, *, secret: bool = True) -> None:
    group = parser.add_argument_group("network options")
    group.add_argument(
        "--beacon",
        action="append",
        metavar="HOST:PORT=CERT_HASH",
        help=f"a beacon pinned by its certificate hash (repeatable; replaces the config's and {ENV_BEACONS})",
    )
    lan = group.add_mutually_exclusive_group()
    lan.add_argument(
        "--lan", dest="lan", action="store_true", default=None, help="also meet peers on the local network (mDNS)"
    )
    lan.add_argument("--no-lan", dest="lan", action="store_false", help="no LAN discovery")
    relay = group.add_mutually_exclusive_group()
    relay.add_argument(
        "--no-relay",
        dest="relay",
        action="store_false",
        default=None,
        help="never relay through a beacon (direct paths only)",
    )
    relay.add_argument(
        "--relay-only",
        action="store_true",
        default=None,
        help="never punch: always go through a beacon's relay (for testing the relay path)",
    )
    group.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="how long to look for the peer (default 15)")
    group.add_argument("--udp-host", metavar="ADDR", help="address of our UDP socket (default: any)")
    group.add_argument("--udp-port", type=_port, metavar="PORT", help="port of our UDP socket (default: any free)")
    group.add_argument(
        "--proxy",
        metavar="URL",
        help="HTTP CONNECT proxy for the beacons' TLS/TCP path, http://[user:pass@]host:port "
        "(default: HTTPS_PROXY, unless NO_PROXY names the beacon; 'none': never)",
    )
    group.add_argument(
        "--max-datagram-size",
        type=int,
        metavar="BYTES",
        help="QUIC datagram size of peer connections, 1200..16000 (default 1350; on aioquic a cap on "
        "what path-MTU probing finds); e.g. 1472 on a LAN, 1280 on a tunnel that drops larger packets",
    )
    group.add_argument(
        "--tuning",
        action="append",
        metavar="NAME=VALUE",
        help="a data-path setting of discretpeer.Tuning (repeatable; e.g. gso=off), or path=RATE@RTT: "
        "receive windows for one stream to fill such a path, e.g. path=1gbit@80ms (memory: a stalled "
        "stream may hold its window, 2 x rate x RTT)",
    )
    if secret:
        group.add_argument(
            "--secret",
            metavar="TEXT",
            help="meet on this shared secret instead of the meeting derived from both peer ids "
            "(both sides must give it; prefer DISCRETPEER_SECRET: arguments are visible in ps)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Reach any TCP service of a device behind NAT: peers meet through QUIC beacons, punch through "
        "NATs (relay when they cannot), prove their identities, and carry TCP connections as QUIC streams.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "id",
        help="create or show this machine's peer id",
        description="Print this machine's peer id (creating the identity on first use). "
        "Give the peer id to the other side; keep the identity file private.",
        epilog=EPILOG,
    )
    _add_base(p)
    p.add_argument("--path", action="store_true", help="also print the identity file's path (stderr)")

    p = sub.add_parser(
        "expose",
        help="let allowed peers reach local TCP services",
        description="Offer local TCP services (e.g. 22 or 80) to the peers in the allow list. "
        "They reach them with `forward` or `pipe`. Runs until interrupted; `status` shows what it does.",
        epilog=EPILOG,
    )
    p.add_argument(
        "ports",
        nargs="*",
        metavar="PORT",
        help="a port (of --host) or HOST:PORT to expose; several allowed (default: the config's expose)",
    )
    p.add_argument("--host", metavar="HOST", help="host of the ports given as numbers (default 127.0.0.1)")
    p.add_argument(
        "--allow",
        action="append",
        metavar="PEER",
        help="a peer id (or a name from [peers]) allowed to connect, PEER:PORT to allow only that "
        "port; repeatable or comma-separated (replaces the config's allow list)",
    )
    p.add_argument(
        "--control", metavar="PATH", help="control socket for `status` (default ~/.config/discretpeer/expose.sock)"
    )
    _add_base(p)
    _add_network(p)

    p = sub.add_parser(
        "forward",
        help="carry a local TCP port to a peer's exposed service",
        description="Listen on a local TCP port and carry each connection to the service exposed by "
        "the peer, over one peer connection (one QUIC stream per TCP connection); reconnects when "
        "the peer connection drops. Runs until interrupted.",
        epilog=EPILOG,
    )
    p.add_argument("local_port", type=_port, metavar="LOCALPORT", help="local TCP port to listen on (0: any free)")
    p.add_argument("--to", required=True, metavar="PEER", help="the exposing peer's id (or a name from [peers])")
    p.add_argument(
        "--port",
        type=_remote_port,
        metavar="REMOTEPORT",
        help="the exposed port to reach (default: the peer's only exposed port)",
    )
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="local address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--control",
        metavar="PATH",
        help="serve `discretpeer status --control PATH` on this unix socket (none by default: several "
        "forwards may run at once)",
    )
    _add_base(p)
    _add_network(p)

    p = sub.add_parser(
        "pipe",
        help="connect stdin/stdout to a peer's exposed service (ssh ProxyCommand)",
        description="Carry stdin/stdout to the service exposed by the peer; nothing else is written "
        "to stdout. Example: ssh -o ProxyCommand='discretpeer pipe --to PEER --port 22' user@device",
        epilog=EPILOG,
    )
    p.add_argument("--to", required=True, metavar="PEER", help="the exposing peer's id (or a name from [peers])")
    p.add_argument(
        "--port",
        type=_remote_port,
        metavar="PORT",
        help="the exposed port to reach (default: the peer's only exposed port)",
    )
    _add_base(p)
    _add_network(p)

    p = sub.add_parser(
        "doctor",
        help="check beacons, public address, NAT behaviour, mDNS",
        description="Check what peers need: each beacon reachable over UDP and matching its pinned "
        "hash, our public address, the NAT's mapping behaviour (needs two beacons), mDNS. One "
        "OK/WARN/FAIL line per check; exit code 1 when something FAILs.",
        epilog=EPILOG,
    )
    p.add_argument("--no-mdns", action="store_true", help="skip the mDNS check")
    _add_base(p)
    _add_network(p, secret=False)

    p = sub.add_parser(
        "invite",
        help="pair with another machine by a short code (prints the code)",
        description="Print a short code (like 7-apple-river, valid a few minutes, one use) and wait "
        "for the other machine to run `discretpeer accept CODE`. Both meet through the beacon, check "
        "the code with a PAKE (SPAKE2: a wrong code fails, and an eavesdropper or the beacon learns "
        "nothing), then add each other to `allow` and `[peers]` in their config files.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--name", metavar="NAME", help="the name to give the other machine in [peers] (default: its host name)"
    )
    p.add_argument(
        "--valid", type=_seconds, default=300.0, metavar="SECONDS", help="how long the code is valid (default 300)"
    )
    p.add_argument(
        "--browser",
        action="store_true",
        help="pair a web browser instead (a code like K7Q2-9XMT4H to type into the beacon's page; "
        "needs --url or web_url in the config); "
        "it lands in allow and [peers] too, and `discretpeer web serve` gives it a shell",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="with --browser: the beacon's signalling WebSocket, wss://HOST/ws (default: web_url)",
    )
    _add_base(p)
    _add_network(p, secret=False)

    p = sub.add_parser(
        "accept",
        help="pair with the machine that printed CODE (discretpeer invite)",
        description="Meet the machine that ran `discretpeer invite`, check the code with it, and add "
        "each other to `allow` and `[peers]`. A wrong or expired code writes nothing.",
        epilog=EPILOG,
    )
    p.add_argument("code", metavar="CODE", help="the code `discretpeer invite` printed, e.g. 7-apple-river")
    p.add_argument(
        "--name", metavar="NAME", help="the name to give the other machine in [peers] (default: its host name)"
    )
    _add_base(p)
    _add_network(p, secret=False)

    p = sub.add_parser(
        "ping",
        help="time round trips to a peer and show the path (direct, lan, relay)",
        description="Meet the peer (as forward and pipe do) and time round trips over the peer "
        "connection (QUIC PINGs, answered by any running `expose` that allows us), showing the path "
        "that carries them. Exit code 1 when no pong came back.",
        epilog=EPILOG,
    )
    p.add_argument("peer", metavar="PEER", help="the peer's id (or a name from [peers])")
    p.add_argument("-c", "--count", type=_count, default=4, metavar="N", help="round trips (default 4)")
    p.add_argument(
        "--interval", type=_seconds, default=0.5, metavar="SECONDS", help="time between round trips (default 0.5)"
    )
    _add_base(p)
    _add_network(p)
    from .web import add_parser as _add_web_parser  # the browser shell (issue 19)

    _add_web_parser(sub, _add_base, EPILOG)

    p = sub.add_parser(
        "status",
        help="show what the running expose (or a forward) is doing",
        description="Connections, their paths (direct/lan/relay), tunnels and bytes of the running "
        "`expose` (or of a `forward --control PATH`), read from its control socket.",
        epilog=EPILOG,
    )
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS", help="refresh interval (default 1)")
    p.add_argument("--control", metavar="PATH", help="control socket of the expose (or of a forward)")
    _add_base(p)
    return parser


async def _id(settings: Settings, args: Any, console: Console) -> int:
    from .settings import load_identity

    identity, created = load_identity(settings)
    if console.json:
        print(json.dumps({"peer_id": identity.peer_id, "identity": str(settings.identity_path), "created": created}))
        return 0
    if created and not console.quiet:
        print(
            f"{PROG}: created a new identity in {settings.identity_path} (keep it private; the peer id is public)",
            file=sys.stderr,
        )
    elif args.path and not console.quiet:
        print(f"{PROG}: identity {settings.identity_path}", file=sys.stderr)
    print(identity.peer_id, flush=True)
    return 0


def _handler(command: str) -> Callable[[Settings, Any, Console], Coroutine[Any, Any, int]]:
    if command == "id":
        return _id
    if command == "expose":
        from .expose import run_expose

        return run_expose
    if command in ("forward", "pipe"):
        from .forward import run_forward, run_pipe

        return run_forward if command == "forward" else run_pipe
    if command in ("invite", "accept"):
        from .invite import run_accept, run_invite

        return run_invite if command == "invite" else run_accept
    if command == "ping":
        from .ping import run_ping

        return run_ping
    if command == "doctor":
        from .doctor import run_doctor

        return run_doctor
    if command == "web":
        from .web import run_web

        return run_web
    from .status import run_status

    return run_status


def _run(coro: Coroutine[Any, Any, int]) -> int:
    # DISCRETPEER_LOOP=asyncio|uvloop|auto (default auto: uvloop when installed)
    choice = os.environ.get(ENV_LOOP, "auto").strip().lower() or "auto"
    if choice not in ("auto", "uvloop", "asyncio"):
        coro.close()
        raise ConfigError(f"{ENV_LOOP} must be auto, uvloop or asyncio, got {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                coro.close()
                raise ConfigError(f"{ENV_LOOP}=uvloop but uvloop is not installed") from None
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    console = Console(quiet=args.quiet, json_mode=args.json, events=sys.stderr if args.command == "pipe" else None)
    if args.command == "doctor" and args.timeout is None:
        args.timeout = 6.0
    try:
        settings = load_settings(args)
        code = _run(_handler(args.command)(settings, args, console))
        return 130 if output.interrupted and code == 0 else code
    except (ConfigError, IdentityError) as exc:
        console.error(str(exc), event="config_error")
        return 2
    except (ConnectError, ControlError) as exc:
        console.error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a socket that cannot be bound, an address that does not exist ...
        if args.verbose >= 2:
            traceback.print_exc(file=sys.stderr)
        where = f" ({exc.filename})" if exc.filename else ""
        console.error(f"{exc.strerror or exc}{where}")
        return 1
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (unless -vv)
        if args.verbose >= 2:
            traceback.print_exc(file=sys.stderr)
        console.error(f"unexpected {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
