"""Real programs for the CLI tests: the beacon (`python -m beacon`), `discretpeer` processes with
their own HOME, config and identity, and small TCP services. Everything on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CLI = [PYTHON, "-m", "discretpeer.cli"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCRETPEER_") and k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return env


class Proc:
    """A child process whose stdout lines are collected (JSON events parsed) by a thread."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        prefix: list[str] | None = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> None:
        self.log = log
        self._stderr = open(log, "wb")  # noqa: SIM115 - open for the life of the process
        self.popen = subprocess.Popen(
            (prefix or []) + args, env=env, cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._seen = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def next_line(self, timeout: float = 10.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; stderr: {self.stderr()[-2000:]}") from None

    def wait_event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events[self._seen :]:
            self._seen += 1
            if event.get("event") == name:
                return event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.popen.poll() is not None and self.lines.empty():
                raise AssertionError(f"no {name!r} event (exit {self.popen.poll()}); stderr: {self.stderr()[-3000:]}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                self.events.append(event)
                self._seen = len(self.events)
                if event.get("event") == name:
                    return event

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._stderr.close()
        return self.popen.returncode


class Beacon:
    def __init__(self, directory: Path, prefix: list[str] | None = None, port: int = 0, settings: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if settings:  # e.g. "behaviour_enabled = false" (the rest stays at its default)
            (directory / "Beacon.conf.toml").write_text(settings + "\n")
        self.proc = Proc(
            [PYTHON, "-m", "beacon", "--dir", str(directory), "--host", "127.0.0.1", "--port", str(port), "--no-ipv6"],
            clean_env(directory),
            directory / "stderr.log",
            prefix,
        )
        self.fingerprint = ""
        self.address = ""
        while True:
            line = self.proc.next_line(15.0)
            if line.startswith("certificate hash: "):
                self.fingerprint = line.split(": ", 1)[1]
            elif line.startswith("listening on "):
                self.address = line.split(" on ", 1)[1]
            elif line == "ready":
                break
        self.flag = f"{self.address}={self.fingerprint}"

    def stop(self) -> None:
        self.proc.stop()


class Node:
    """One machine: its own HOME (config + identity); runs `discretpeer` subcommands."""

    def __init__(self, home: Path, beacons: list[Beacon], prefix: list[str] | None = None, **config: Any) -> None:
        self.home = home
        self.prefix = prefix
        self.procs: list[Proc] = []
        directory = home / ".config" / "discretpeer"
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["beacons = ["]
        for beacon in beacons:
            lines.append(f'  {{hostname = "{beacon.address}", cert_hash = "{beacon.fingerprint}"}},')
        lines.append("]")
        config = {"udp_host": "127.0.0.1", "timeout": 10, **config}
        for key, value in config.items():
            lines.append(f"{key} = {json.dumps(value)}")
        (directory / "config.toml").write_text("\n".join(lines) + "\n")
        self.env = clean_env(home)
        self.peer_id = self.run("id", "-q").stdout.strip()

    def run(
        self, *args: str, timeout: float = 60.0, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            (self.prefix or []) + CLI + list(args),
            env={**self.env, **(env or {})},
            cwd=ROOT,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_bytes(self, *args: str, input: bytes = b"", timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            (self.prefix or []) + CLI + list(args),
            env=self.env,
            cwd=ROOT,
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def start(self, *args: str, name: str) -> Proc:
        proc = Proc(CLI + list(args), self.env, self.home / f"{name}.log", self.prefix)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


# --- small TCP services (threads, real sockets) ------------------------------------------------


def sshd_argv(root: Path, port: int) -> list[str]:
    """Make an sshd set-up in ``root`` (host key, a client key ``root/client`` allowed as root,
    a config listening on 127.0.0.1:``port``); return the argv that runs that sshd in the foreground."""
    for name in ("hostkey", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_bytes((root / "client.pub").read_bytes())
    os.chmod(root / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'hostkey'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {root / 'sshd.pid'}\nLogLevel ERROR\n"
    )
    return ["/usr/sbin/sshd", "-D", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")]


def ssh_through_pipe(
    b: Node, a: Node, port: int, key: Path, command: str, *, prefix: list[str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` over ssh as root from B, with ``discretpeer pipe --to A --port port`` as the
    ProxyCommand (``prefix``: e.g. ``ip netns exec NS``)."""
    proxy = " ".join(
        [
            "env",
            f"HOME={b.home}",
            f"PYTHONPATH={b.env['PYTHONPATH']}",
            *CLI,
            "pipe",
            "--to",
            a.peer_id,
            "--port",
            str(port),
        ]
    )
    return subprocess.run(
        [
            *(prefix or []),
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(key),
            "-o",
            f"ProxyCommand={proxy}",
            "root@device",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def tcp_service(handler: Callable[[socket.socket], None]) -> tuple[_Server, int]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                handler(self.request)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def echo(sock: socket.socket) -> None:
    """Echo until EOF, then half-close (the client sees EOF after all its bytes)."""
    while data := sock.recv(65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


class EofReporter:
    """Reads until EOF, records it, answers how many bytes it got, closes."""

    def __init__(self) -> None:
        self.eofs: queue.Queue[int] = queue.Queue()

    def __call__(self, sock: socket.socket) -> None:
        total = 0
        while data := sock.recv(65536):
            total += len(data)
        self.eofs.put(total)
        with contextlib.suppress(OSError):
            sock.sendall(f"got {total}".encode())


def closer(sock: socket.socket) -> None:
    sock.sendall(b"bye\n")
    sock.close()


@pytest.fixture(scope="session")
def services() -> Iterator[dict[str, Any]]:
    servers = []
    reporter = EofReporter()
    found: dict[str, Any] = {"eof_reporter": reporter}
    for name, handler in (("echo", echo), ("eof", reporter), ("closer", closer)):
        server, port = tcp_service(handler)
        servers.append(server)
        found[name] = port
    found["dead"] = free_port()  # nothing listens there
    yield found
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, bytes]]:
    root = tmp_path_factory.mktemp("www")
    body = os.urandom(300_000)
    (root / "blob.bin").write_bytes(body)
    (root / "index.html").write_text("<h1>hello through discretpeer</h1>\n")
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    yield port, body
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ssh")
    port = free_port()
    proc = subprocess.Popen(sshd_argv(root, port))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    yield {"port": port, "key": root / "client", "dir": root}
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="session")
def beacon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Beacon]:
    server = Beacon(tmp_path_factory.mktemp("beacon"))
    yield server
    server.stop()


def forward_to(b: Node, a: Node, port: int, *extra: str, name: str) -> Proc:
    """``b`` runs ``discretpeer forward 0 --to A --port PORT --json EXTRA``: a local port to A's service PORT."""
    return b.start("forward", "0", "--to", a.peer_id, "--port", str(port), "--json", *extra, name=name)


@pytest.fixture(scope="session")
def lab(tmp_path_factory, beacon, services, http_server, sshd) -> Iterator[dict[str, Any]]:
    """Device A exposes every service to B; B runs a forward to A's echo service."""
    base = tmp_path_factory.mktemp("lab")
    a = Node(base / "a", [beacon])
    b = Node(base / "b", [beacon])
    c = Node(base / "c", [beacon])  # not allowed anywhere
    ports = [
        str(p)
        for p in (http_server[0], sshd["port"], services["echo"], services["eof"], services["closer"], services["dead"])
    ]
    expose = a.start("expose", *ports, "--allow", b.peer_id, "--json", name="expose")
    expose.wait_event("exposing")
    forward = forward_to(b, a, services["echo"], name="forward")
    listening = forward.wait_event("listening")
    forward.wait_event("connected")
    yield {
        "a": a,
        "b": b,
        "c": c,
        "expose": expose,
        "forward": forward,
        "echo_forward_port": listening["port"],
        "beacon": beacon,
        "services": services,
        "http": http_server,
        "sshd": sshd,
    }
    for node in (a, b, c):
        node.stop_all()
