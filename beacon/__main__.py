"""``python -m beacon`` / ``discret-beacon``: run a beacon from a directory.

SIGHUP re-reads the settings file: the relay limits apply at once, other changed keys are logged
as needing a restart, a file that does not load changes nothing.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 2 for a bad setting, certificate or log file
(a directory, FIFO, device, dangling symlink, oversized or unwritable file: nothing is created in
its place, so a client's pin never changes silently), 1 when a socket cannot be bound.
Errors are one line on stderr, never a traceback. An unusable ``logs/beacon.log`` stops the beacon
too (exit 2) rather than running without the history an operator needs after an incident.

Stdout carries only machine-readable start lines, flushed at once::

    certificate hash: <43 base64url characters>
    listening on 127.0.0.1:4264          (one line per UDP socket; IPv6 as [::]:4264)
    tls over tcp on 127.0.0.1:4264       (one line per TLS/TCP listener, unless tcp_enabled = false)
    nat behaviour on 127.0.0.1:4265      (the second UDP port, unless behaviour_enabled = false or it is taken)
    metrics on http://127.0.0.1:9464/metrics   (only when enabled)
    web page on https://NAME:4264/             (web_enabled: one line per TLS/TCP port with web_certificate,
                                                one for web_port; NAME = the certificate's first DNS name)
    client flag: --beacon HOST:PORT=HASH       (what a client configures, ready to paste)
    client config: beacons = [{hostname = "HOST:PORT", cert_hash = "HASH"}]
    client note: replace YOUR.HOST with ...    (only when listening on 0.0.0.0)
    firewall: open 4264/udp (QUIC), 4265/udp (NAT behaviour), 4264/tcp (TLS)   (every port to let in)
    workers: 4                           (only with workers > 1: the supervisor, see beacon.workers)
    ready

``--ready-file PATH`` also writes the same facts as JSON (atomically, removed on a clean stop).
``--loop auto|uvloop|asyncio``: the event loop (default: uvloop when installed).
Human-readable logs go to stderr and JSON logs to ``logs/beacon.log``; a ``summary`` line every
``summary_interval_seconds`` (peers, introductions, relay sessions and bytes). ``--version``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from beacon import __version__
from beacon.config import ConfigError, load_config
from beacon.files import BeaconFiles, StartupError, prepare
from beacon.logs import BeaconLog, LogFileError
from beacon.relay import relay_quota
from beacon.server import BeaconServer
from beacon.store import StoreUnavailable
from beacon.summary import log_summaries
from beacon.workers import Supervisor, worker_sockets
from discretpeer.addresses import Addr
from discretpeer.tasks import cancel_and_wait

PROG = "discret-beacon"
PLACEHOLDER_HOST = "YOUR.HOST"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="discretpeer rendezvous beacon (QUIC).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--dir", type=Path, default=Path("."), help="beacon directory (default: current)")
    p.add_argument("--config", type=Path, help="settings file (default: DIR/Beacon.conf.toml, created if missing)")
    p.add_argument("--host", help="IPv4 address to listen on")
    p.add_argument("--port", type=int, help="IPv4 UDP port (0 = any free port)")
    p.add_argument("--ipv6-host", help="IPv6 address to listen on")
    p.add_argument("--ipv6-port", type=int, help="IPv6 UDP port (0 = any free port)")
    p.add_argument("--no-ipv6", action="store_true", help="do not listen on IPv6")
    p.add_argument("--metrics-port", type=int, help="enable metrics on 127.0.0.1:PORT (0 = any free port)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--ready-file", type=Path, help="write a JSON file with hash and bound addresses when ready")
    p.add_argument("--workers", type=int, help="worker processes sharing the port (needs store = redis://...)")
    # set by the supervisor (beacon.workers) on the processes it starts
    for flag in ("--worker-index", "--worker-count"):
        p.add_argument(flag, type=int, help=argparse.SUPPRESS)
    for flag in ("--worker-fds", "--worker-machine"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop: uvloop when installed (auto, the default; `pip install discretpeer[fast]`) or asyncio's",
    )
    return p


def _runner(choice: str) -> Any:
    """``asyncio.run`` or ``uvloop.run`` (measured: fewer CPU cycles per datagram)."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise StartupError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.run
    return asyncio.run


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "host": args.host,
        "port": args.port,
        "ipv6_host": args.ipv6_host,
        "ipv6_port": args.ipv6_port,
        "metrics_port": args.metrics_port,
        "log_level": args.log_level,
        "workers": args.workers,
    }
    overrides = {key: value for key, value in pairs.items() if value is not None}
    if args.no_ipv6:
        overrides["ipv6_enabled"] = False
    if args.metrics_port is not None:
        overrides["metrics_enabled"] = True
    if args.worker_index is not None:
        overrides["metrics_port"] = 0  # the supervisor serves the configured port for all workers
    return overrides


def _write_ready_file(path: Path, facts: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _reload(files: BeaconFiles, server: BeaconServer, log: Any, overrides: dict[str, Any]) -> None:
    """SIGHUP (``systemctl reload``): read the settings file again. The relay limits apply at once
    (to sessions granted from now on; the beacon-wide rate cap to all); other changed keys are
    named as needing a restart. A file that does not load changes nothing (one error line)."""
    try:
        new = load_config(files.config_path, overrides)
    except ConfigError as exc:
        log.error("reload failed, keeping the current settings", error=str(exc))
        print(f"{PROG}: error: reload failed, keeping the current settings: {exc}", file=sys.stderr, flush=True)
        return
    old = server.config
    changed = [f.name for f in dataclasses.fields(new) if getattr(new, f.name) != getattr(old, f.name)]
    server.relay.set_quota(relay_quota(new))
    applied = [name for name in changed if name.startswith("relay_")]
    restart = [name for name in changed if not name.startswith("relay_")]
    server.config = dataclasses.replace(old, **{name: getattr(new, name) for name in applied})
    log.info("reloaded", config=str(files.config_path), applied=applied, need_restart=restart)


async def _serve(
    files: BeaconFiles,
    log: Any,
    ready_file: Path | None,
    overrides: dict[str, Any] | None = None,
    args: argparse.Namespace | None = None,
) -> int:
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # before anything is announced as ready
        loop.add_signal_handler(sig, on_signal, sig)
    worker: dict[str, Any] = {}
    if args is not None and args.worker_index is not None:
        # a worker of a supervisor (beacon.workers): its socket is inherited
        worker = {
            "sockets": worker_sockets(args.worker_fds or ""),
            "worker_index": args.worker_index,
            "machine": args.worker_machine,
        }
    web = None
    if files.config.web_enabled:  # the browser shell's page + signalling (issue 19), before the TLS/TCP listener
        try:
            from .web import WebService, options_from_config
        except ImportError as exc:
            print(
                f"{PROG}: error: web_enabled needs the 'web' extra (pip install 'discretpeer[web]'): {exc}",
                file=sys.stderr,
            )
            return 1
        web = WebService(options_from_config(files.config), log=log)
        try:
            await web.start()
        except (OSError, ValueError) as exc:
            await web.stop()
            print(f"{PROG}: error: web page: {exc}", file=sys.stderr)
            return 1
    server = BeaconServer(files.config, files.bundle, log=log, manage_gc=True, web=web, **worker)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(files, server, log, overrides or {}))
    try:
        await server.start()
    except (OSError, StoreUnavailable) as exc:
        if web is not None:
            await web.stop()
        if isinstance(exc, StoreUnavailable):
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        print(f"{PROG}: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    addresses = [_show(host, port) for host, port in server.addresses]
    metrics = None
    if server.metrics_address is not None:
        metrics = f"http://{server.metrics_address[0]}:{server.metrics_address[1]}/metrics"
    lines = [f"certificate hash: {server.fingerprint}"]
    lines += [f"listening on {address}" for address in addresses]
    tcp_addresses = [_show(host, port) for host, port in server.tcp_addresses]
    lines += [f"tls over tcp on {address}" for address in tcp_addresses]
    behaviour = None if server.behaviour_port is None else _show(files.config.host, server.behaviour_port)
    if behaviour is not None:
        lines.append(f"nat behaviour on {behaviour}")
    if metrics:
        lines.append(f"metrics on {metrics}")
    lines += client_lines(files.config.host, server.port, server.ipv6_port, server.fingerprint)
    firewall = firewall_line(server)
    lines.append(firewall)
    if web is not None:
        lines += web_lines(web, server.tcp_addresses)
    lines.append("ready")
    if ready_file is not None:
        try:
            _write_ready_file(
                ready_file,
                {
                    "pid": os.getpid(),
                    "fingerprint": server.fingerprint,
                    "addresses": addresses,
                    "tcp_addresses": tcp_addresses,
                    "behaviour_address": behaviour,
                    "firewall": firewall,  # the supervisor of several workers prints it as is
                    "port": server.port,
                    "ipv6_port": server.ipv6_port,
                    "metrics": metrics,
                },
            )
        except OSError as exc:
            await server.stop(reason="beacon could not start")
            print(f"{PROG}: error: --ready-file {ready_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    print("\n".join(lines), flush=True)  # after the ready file: "ready" means both are there
    summaries = asyncio.create_task(log_summaries(server.metrics, log, files.config.summary_interval_seconds))
    try:
        await stop.wait()
    finally:
        await cancel_and_wait(summaries)  # the beacon stops whatever it did
        stops = [server.stop(reason=f"beacon is shutting down ({received[0] if received else 'stop'})")]
        if web is not None:
            # side by side: a stranger's unfinished web request holds the web service's stop for
            # up to 5 s, which must not delay telling the beacon's clients
            stops.append(web.stop())
        await asyncio.gather(*stops)
        if ready_file is not None:
            with contextlib.suppress(OSError):
                ready_file.unlink()
    return 0


def web_lines(web: Any, tcp_addresses: list[Addr]) -> list[str]:
    """Where browsers open the page: its own listener, and each TLS/TCP port under the certificate's
    first name (a wildcard name stands for any one label: shown as is)."""
    lines = []
    if web.address is not None:
        scheme = "https" if web.tls_context is not None else "http"
        lines.append(f"web page on {scheme}://{_show(*web.address)}/")
    if web.tls_context is not None and web.hostnames:
        for port in sorted({port for _, port in tcp_addresses}):
            lines.append(f"web page on https://{web.hostnames[0]}{'' if port == 443 else f':{port}'}/")
    return lines


def client_lines(host: str, port: int, ipv6_port: int | None, fingerprint: str) -> list[str]:
    """What a client configures, ready to paste: the ``--beacon`` flag and the TOML entry.

    On a wildcard address the beacon cannot know the name clients reach it by: a placeholder
    and a note say what to put there."""
    wildcard = ipaddress.ip_address(host).is_unspecified
    address = f"{PLACEHOLDER_HOST if wildcard else host}:{port}"
    lines = [
        f"client flag: --beacon {address}={fingerprint}",
        f'client config: beacons = [{{hostname = "{address}", cert_hash = "{fingerprint}"}}]',
    ]
    if wildcard:
        ports = f"UDP port {port}" + (f" (IPv6: {ipv6_port})" if ipv6_port not in (None, port) else "")
        lines.append(
            f"client note: replace {PLACEHOLDER_HOST} with this machine's public DNS name or IP address; "
            f"clients need {ports} reachable"
        )
    return lines


def firewall_line(server: BeaconServer) -> str:
    """Every port a firewall in front of the beacon must let in, with what each one is for."""
    udp = {server.port} if server.ipv6_port is None else {server.port, server.ipv6_port}
    ports = [f"{port}/udp (QUIC)" for port in sorted(udp)]
    if server.behaviour_port is not None:
        ports.append(f"{server.behaviour_port}/udp (NAT behaviour)")
    ports += [f"{port}/tcp (TLS)" for port in sorted({port for _, port in server.tcp_addresses})]
    return "firewall: open " + ", ".join(ports)


def _without_ready_file(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ready-file":
            skip = True
        elif not arg.startswith("--ready-file="):
            out.append(arg)
    return out


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        files = prepare(args.dir, config_path=args.config, overrides=_overrides(args))
    except StartupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        run = _runner(args.loop)
    except StartupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    c = files.config
    supervise = c.workers > 1 and args.worker_index is None
    if supervise and c.store == "memory":
        print(
            f'{PROG}: error: workers = {c.workers} needs a shared store: set store = "redis://host:port/db" '
            "(the in-memory meeting table cannot be shared between processes), or workers = 1",
            file=sys.stderr,
        )
        return 2
    log_dir = files.log_dir
    if args.worker_index is not None:
        log_dir = files.log_dir / f"worker-{args.worker_index}"  # one rotating file per process
        log_dir.mkdir(exist_ok=True)
    try:
        beacon_log = BeaconLog(
            log_dir, level=c.log_level, max_bytes=c.log_file_max_bytes, backup_count=c.log_file_count
        )
    except LogFileError as exc:
        # Refuse to start rather than run without the log history an operator will need later.
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        for path in files.created:
            beacon_log.log.info("created", path=str(path))
        if supervise:
            worker_argv = _without_ready_file(sys.argv[1:] if argv is None else argv)
            return Supervisor(worker_argv, c, args.ready_file, beacon_log.log, os.urandom(6).hex()).run()
        return run(_serve(files, beacon_log.log, args.ready_file, _overrides(args), args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        beacon_log.log.exception("crashed")
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        beacon_log.close()


if __name__ == "__main__":
    sys.exit(main())
