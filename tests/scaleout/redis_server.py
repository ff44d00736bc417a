"""A real redis-server for the scale-out tests: free loopback port, temp dir, stopped by PID;
plain or TLS (certificates from tests/support/certificates.py)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from tests.support.certificates import TlsFiles
from tests.support.processes import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``with RedisServer(tmp_path) as r: r.url`` — no persistence, so a restart forgets everything.

    With ``tls`` (a server certificate from :func:`make_tls_files`) it listens on TLS only
    (``--port 0 --tls-port``) and ``url`` is ``rediss://``; ``auth_clients`` is Redis's
    ``tls-auth-clients`` (``"no"``, ``"optional"``, ``"yes"``: client certificates signed by
    ``client_ca``)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        password: str = "",
        *,
        tls: TlsFiles | None = None,
        auth_clients: str = "no",
        client_ca: Path | None = None,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is missing (Debian package redis-server: scripts/test.sh installs it)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.auth_clients = auth_clients
        self.client_ca = client_ca
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _listen_arguments(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.cert),
            "--tls-key-file",
            str(self.tls.key),
            "--tls-ca-cert-file",
            str(self.client_ca or self.tls.ca),
            "--tls-auth-clients",
            self.auth_clients,
        ]

    def _answers(self) -> bool:
        """A PING (over TLS when the server speaks it) gets PONG, or NOAUTH with a password."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            if self.tls is None:
                return self._ping(raw)
            # readiness only: the test CA is not checked here, the tests check it through the beacon
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if self.auth_clients == "yes":
                return True  # the handshake needs a client certificate; a listening port will do
            with context.wrap_socket(raw) as s:
                return self._ping(s)

    @staticmethod
    def _ping(s: socket.socket) -> bool:
        s.sendall(b"PING\r\n")
        answer = s.recv(64)
        return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                "redis-server",
                *self._listen_arguments(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self._answers():
                    return self
            except OSError:  # ssl.SSLError too
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in 10 s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
