"""Several worker processes behind one UDP port (``workers = N``), under a supervisor.

**Sockets.** The supervisor binds the N sockets of the ``SO_REUSEPORT`` group itself (per
address family), in order, and hands socket *i* to worker *i* (inherited file descriptor). It
keeps them open for its whole life: a worker that dies leaves its socket in the group at the same
index, and its replacement takes it over. (Sockets bound by the workers themselves would change
places in the kernel's group every time one is closed, and the steering below would point at
the wrong worker after each restart.)

**Steering: the worker's index in the server-chosen connection ID + a reuseport BPF program.**
Worker *i* issues only connection IDs whose first byte is *i* (:func:`steered_connection_class`);
a classic BPF program attached to the group (``SO_ATTACH_REUSEPORT_CBPF``, :func:`steering_program`)
sends every short-header QUIC packet to the socket whose index is the first byte of its
destination connection ID. A peer whose NAT rebinds its port mid-connection (a new source
address, hence a new 4-tuple hash) keeps reaching the worker that holds its connection, without
any datagram crossing between workers. Long-header packets (handshakes: the client picks that
ID) and anything whose byte is not a worker index fall back to the kernel's 4-tuple hash. Relay
datagrams (``RELAY_DATA``, 0x20: the long-header bit is clear) are steered the same way by the
first byte of their session ID, which the worker granting the session sets to its own index: both
peers' datagrams reach the one worker that holds the session, whichever worker holds their
beacon connections. The other option, forwarding misrouted datagrams between workers, costs a
second send and receive for every datagram of every rebinding peer and needs a worker-to-worker
channel in the hot path; the BPF program costs nothing measurable and the kernel here (Linux 6.x)
accepts it without privileges.

**Supervisor.** Starts the workers (``python -m beacon`` with hidden ``--worker-*`` flags),
waits until every one is ready, then prints the usual start lines (``ready`` last) and writes the
ready file. A worker that exits is restarted (after 0.5 s, doubling to 10 s while it keeps
failing within 10 s of its start). SIGTERM/SIGINT are forwarded and the supervisor exits 0 when
all workers stopped; SIGHUP is forwarded. With metrics enabled, the supervisor serves one
endpoint that concatenates every worker's metrics, each sample labelled ``worker="i"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aioquic.quic.connection import QuicConnection

from discretpeer._aioquic import first_byte_connection_class
from discretpeer.endpoint import enlarge_buffers

# Bytes asked for each of the beacon's UDP sockets, each way. Not a peer's 16 MiB receive buffer: what
# waits in it waits ahead of every peer's control messages, relayed or not, when the beacon is busy.
SOCKET_BUFFER = 4 * 1024 * 1024

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
# the benchmark's baseline runs without the program (kernel hash only): DISCRETPEER_BEACON_STEERING=0
STEERING = os.environ.get("DISCRETPEER_BEACON_STEERING", "1") != "0"
MAX_WORKERS = 256
RESTART_MIN = 0.5
RESTART_MAX = 10.0
READY_TIMEOUT = 60.0

# classic BPF opcodes
_LD_B_ABS = 0x30
_JSET_K = 0x45
_JGE_K = 0x35
_RET_A = 0x16
_RET_K = 0x06


def steering_program(workers: int) -> bytes:
    """The reuseport program: short header → socket ``data[1]`` if < ``workers``, else hash.

    (For a short-header QUIC packet ``data[1]`` is the first byte of the destination connection
    ID; for a relay datagram, the first byte of its session ID.)"""
    instructions = [
        (_LD_B_ABS, 0, 0, 0),  # A = data[0]
        (_JSET_K, 3, 0, 0x80),  # long header → fall back to the hash
        (_LD_B_ABS, 0, 0, 1),  # A = data[1]
        (_JGE_K, 1, 0, workers),  # not a worker index → hash
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, 0xFFFFFFFF),  # an index out of range: the kernel picks by hash
    ]
    return b"".join(struct.pack("HBBI", *i) for i in instructions)


def attach_steering(sock: socket.socket, workers: int) -> bytes:
    """Attach :func:`steering_program` to ``sock``'s reuseport group. Returns the program (its
    buffer must stay alive until the call returned; the kernel copies it)."""
    import ctypes

    program = steering_program(workers)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    return program


def steered_connection_class(base: type[QuicConnection], index: int) -> type[QuicConnection]:
    """``base`` whose server-chosen connection IDs all start with the byte ``index``."""
    return first_byte_connection_class(base, index)


def steered_session_ids(index: int) -> Any:
    """A random source for relay session IDs whose first byte is ``index`` (see the docstring)."""

    def random(size: int) -> bytes:
        return bytes([index]) + os.urandom(size - 1)

    return random


# --- the supervisor -------------------------------------------------------------------------


def _reuseport_group(family: socket.AddressFamily, host: str, port: int, count: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            enlarge_buffers(sock, SOCKET_BUFFER, SOCKET_BUFFER)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port the first one got
        if STEERING:
            attach_steering(sockets[0], count)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from exc
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.delay = RESTART_MIN
        self.restart_at: float | None = None
        self.restarts = 0
        self.metrics: str | None = None


class Supervisor:
    """Runs ``config.workers`` worker processes; see the module docstring."""

    def __init__(self, argv: list[str], config: Any, ready_file: Path | None, log: Any, machine: str) -> None:
        self.argv = argv
        self.config = config
        self.ready_file = ready_file
        self.log = log
        self.machine = machine
        self.count = config.workers
        self.workers = [_Worker(i) for i in range(self.count)]
        self.groups: list[list[socket.socket]] = []
        self.stopping: str | None = None
        self.hup = False
        self.start_failure = 1
        self.state_dir = Path(tempfile.mkdtemp(prefix="beacon-workers-"))
        self._http: ThreadingHTTPServer | None = None

    def bind(self) -> None:
        c = self.config
        self.groups.append(_reuseport_group(socket.AF_INET, c.host, c.port, self.count))
        if c.ipv6_enabled:
            try:
                self.groups.append(_reuseport_group(socket.AF_INET6, c.ipv6_host, c.ipv6_port, self.count))
            except OSError as exc:
                if self.log is not None:
                    self.log.warning("ipv6_unavailable", host=c.ipv6_host, port=c.ipv6_port, error=str(exc))

    def _spawn(self, worker: _Worker) -> None:
        fds = [group[worker.index].fileno() for group in self.groups]
        ready = self.state_dir / f"worker-{worker.index}.json"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        argv = [
            sys.executable,
            "-m",
            "beacon",
            *self.argv,
            "--worker-index",
            str(worker.index),
            "--worker-count",
            str(self.count),
            "--worker-fds",
            ",".join(map(str, fds)),
            "--worker-machine",
            self.machine,
            "--ready-file",
            str(ready),
        ]
        worker.process = subprocess.Popen(argv, pass_fds=fds, stdout=subprocess.DEVNULL)
        worker.started = time.monotonic()
        worker.restart_at = None

    def _ready(self, worker: _Worker) -> dict[str, Any] | None:
        try:
            return json.loads((self.state_dir / f"worker-{worker.index}.json").read_text())
        except (OSError, ValueError):
            return None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: setattr(self, "stopping", signal.Signals(s).name))
        signal.signal(signal.SIGHUP, lambda _s, _f: setattr(self, "hup", True))
        try:  # everything after __init__ made the state directory, so every way out removes it
            if not self.config.store_start_degraded:
                from beacon.store import StoreUnavailable, redis_options
                from beacon.store_redis import check_reachable

                try:
                    check_reachable(redis_options(self.config))
                except StoreUnavailable as exc:
                    print(f"discret-beacon: error: {exc}", file=sys.stderr)
                    return 2
            try:
                self.bind()
            except OSError as exc:
                print(f"discret-beacon: error: {exc.strerror or exc}", file=sys.stderr)
                return 1
            for worker in self.workers:
                self._spawn(worker)
            facts = self._wait_ready()
            if facts is None:
                return self._shutdown(self.start_failure)
            self._announce(facts)
            while self.stopping is None:
                time.sleep(0.05)
                if self.hup:
                    self.hup = False
                    self._signal_all(signal.SIGHUP)
                self._reap()
            return self._shutdown(0)
        finally:
            for group in self.groups:
                for sock in group:
                    sock.close()
            if self._http is not None:
                self._http.shutdown()
            if self.ready_file is not None:
                with contextlib.suppress(OSError):
                    self.ready_file.unlink()
            for path in self.state_dir.glob("*"):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.state_dir.rmdir()

    def _wait_ready(self) -> list[dict[str, Any]] | None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.stopping is None:
            facts = [self._ready(w) for w in self.workers]
            if all(f is not None for f in facts):
                return facts  # type: ignore[return-value]  # the workers' JSON facts, typed loosely
            for worker in self.workers:
                assert worker.process is not None
                if worker.process.poll() is not None:
                    code = worker.process.returncode
                    print(f"discret-beacon: error: worker {worker.index} exited with {code} at start", file=sys.stderr)
                    self.start_failure = code if code == 2 else 1  # 2: a setting (e.g. the store) is unusable
                    return None
            time.sleep(0.02)
        if self.stopping is None:
            print("discret-beacon: error: workers not ready in time", file=sys.stderr)
        return None

    def _announce(self, facts: list[dict[str, Any]]) -> None:
        first = facts[0]
        metrics = None
        if self.config.metrics_enabled:
            metrics = self._serve_metrics()
        lines = [f"certificate hash: {first['fingerprint']}"]
        lines += [f"listening on {a}" for a in first["addresses"]]
        lines += [f"tls over tcp on {a}" for a in first.get("tcp_addresses", [])]
        if first.get("behaviour_address"):
            lines.append(f"nat behaviour on {first['behaviour_address']}")
        if metrics:
            lines.append(f"metrics on {metrics}")
        if first.get("firewall"):
            lines.append(first["firewall"])
        lines.append(f"workers: {self.count}")
        lines.append("ready")
        if self.ready_file is not None:
            body = {
                "pid": os.getpid(),
                "fingerprint": first["fingerprint"],
                "addresses": first["addresses"],
                "tcp_addresses": first.get("tcp_addresses", []),
                "behaviour_address": first.get("behaviour_address"),
                "port": first["port"],
                "ipv6_port": first["ipv6_port"],
                "metrics": metrics,
                "workers": [{"index": w.index, "pid": f["pid"]} for w, f in zip(self.workers, facts, strict=True)],
            }
            tmp = self.ready_file.with_name(f".{self.ready_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.ready_file)
        print("\n".join(lines), flush=True)

    def _reap(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                quick = now - worker.started < 10.0
                worker.delay = min(worker.delay * 2, RESTART_MAX) if quick else RESTART_MIN
                worker.restart_at = now + worker.delay
                worker.process = None
                worker.restarts += 1
                if self.log is not None:
                    self.log.warning(
                        "worker_exited", worker=worker.index, code=process.returncode, restart_in=worker.delay
                    )
            elif process is None and worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)
                if self.log is not None:
                    self.log.info("worker_restarted", worker=worker.index, pid=worker.process.pid)  # type: ignore[union-attr]  # a restarted worker has its process

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    def _shutdown(self, code: int) -> int:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        return code

    # --- one metrics endpoint for all workers -------------------------------------------------

    def scrape(self) -> bytes:
        """Every worker's metrics, each sample labelled ``worker="i"`` (HELP/TYPE once)."""
        seen: set[str] = set()
        out: list[str] = []
        for worker in self.workers:
            facts = self._ready(worker)
            if not facts or not facts.get("metrics"):
                continue
            try:
                with urllib.request.urlopen(facts["metrics"], timeout=2.0) as response:
                    text = response.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("#"):
                    if line not in seen:
                        seen.add(line)
                        out.append(line)
                    continue
                if not line.strip():
                    continue
                name, _, rest = line.partition(" ")
                if "{" in name:
                    metric, _, labels = name.partition("{")
                    name = f'{metric}{{worker="{worker.index}",{labels}'
                else:
                    name = f'{name}{{worker="{worker.index}"}}'
                out.append(f"{name} {rest}")
        return ("\n".join(out) + "\n").encode()

    def _serve_metrics(self) -> str:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = supervisor.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer(("127.0.0.1", self.config.metrics_port), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._http.server_port}/metrics"


def worker_sockets(fds: str) -> list[socket.socket]:
    """The inherited sockets of a worker (``--worker-fds``), IPv4 first."""
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
