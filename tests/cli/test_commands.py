"""`discretpeer` as a program: real beacon, real expose/forward/pipe processes, real services."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from discretpeer.identity import Identity
from tests.cli.conftest import CLI, Node, clean_env, forward_to, free_port, ssh_through_pipe

ROOT_ID_LEN = 52
OTHER_ID = Identity.generate().peer_id


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("discretpeer: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


# --- no network --------------------------------------------------------------------------------


def test_id_creates_a_private_identity_once(tmp_path):
    env = clean_env(tmp_path)
    first = subprocess.run(CLI + ["id"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    peer_id = first.stdout.strip()
    assert len(peer_id) == ROOT_ID_LEN and "created a new identity" in first.stderr
    key = tmp_path / ".config" / "discretpeer" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = subprocess.run(CLI + ["id", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(again.stdout) == {"peer_id": peer_id, "identity": str(key), "created": False}
    other = subprocess.run(
        CLI + ["id", "--identity", str(tmp_path / "other.key")], env=env, capture_output=True, text=True
    )
    assert other.stdout.strip() != peer_id
    os.chmod(key, 0o644)
    loose = subprocess.run(CLI + ["id"], env=env, capture_output=True, text=True)
    assert loose.returncode == 2 and "chmod 600" in one_error_line(loose.stderr)


@pytest.mark.parametrize(
    "argv, config, code, text",
    [
        (["forward"], None, 2, "required: LOCALPORT, --to"),
        (["forward", "80", "--to", "nobody"], None, 2, "neither a name from [peers]"),
        (["pipe", "--to", "x" * 52, "--port", "0"], None, 2, "remote port must be 1..65535"),
        (["expose", "22", "--allow", OTHER_ID], None, 2, "no beacon configured"),
        (["expose", "22"], "beacons = []\nlan = true", 2, "nobody is allowed"),
        (["doctor"], "beacons = [", 2, "invalid TOML"),
        (["doctor"], "lan = 'yes'", 2, "'lan' must be a boolean"),
        (["status"], None, 1, "no running expose"),
        (["bogus"], None, 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_with_the_right_exit_code(tmp_path, argv, config, code, text):
    if config is not None:
        path = tmp_path / ".config" / "discretpeer" / "config.toml"
        path.parent.mkdir(parents=True)
        path.write_text(config)
    result = subprocess.run(CLI + argv, env=clean_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == code, result.stderr
    assert text in one_error_line(result.stderr)
    assert result.stdout == ""


def test_help_everywhere():
    for command in (
        [],
        ["id"],
        ["expose"],
        ["forward"],
        ["pipe"],
        ["ping"],
        ["invite"],
        ["accept"],
        ["doctor"],
        ["status"],
    ):
        result = subprocess.run(CLI + command + ["--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: discretpeer" in result.stdout


# --- through a real beacon ---------------------------------------------------------------------


def test_http_page_through_forward_with_curl(lab, tmp_path):
    b: Node = lab["b"]
    port, body = lab["http"]
    forward = forward_to(b, lab["a"], port, name="fwd-http")
    local = forward.wait_event("listening")["port"]
    page = subprocess.run(
        ["curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{local}/index.html"], capture_output=True, text=True
    )
    assert page.returncode == 0, page.stderr + forward.stderr()
    assert page.stdout == "<h1>hello through discretpeer</h1>\n"
    blob = urllib.request.urlopen(f"http://127.0.0.1:{local}/blob.bin", timeout=20).read()
    assert hashlib.sha256(blob).digest() == hashlib.sha256(body).digest()
    connected = forward.wait_event("connected")
    assert connected["path"] == "direct" and connected["peer"] == lab["a"].peer_id
    forward.stop()


def test_ssh_through_pipe_proxycommand(lab):
    sshd, a, b = lab["sshd"], lab["a"], lab["b"]
    result = ssh_through_pipe(b, a, sshd["port"], sshd["key"], "echo through-the-tunnel; echo $((6*7))")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "through-the-tunnel\n42\n"
    assert "path direct" in result.stderr  # our status line, on ssh's stderr


def test_pipe_is_binary_safe_and_stdout_carries_only_data(lab):
    payload = os.urandom(1 << 20) + bytes(range(256)) * 4
    started = time.monotonic()
    # -vv: every log on, and still nothing but the data on stdout
    result = lab["b"].run_bytes(
        "pipe", "-vv", "--to", lab["a"].peer_id, "--port", str(lab["services"]["echo"]), input=payload
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert b"DEBUG" in result.stderr and b"path direct" in result.stderr
    assert len(result.stdout) == len(payload)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()
    print(f"\npipe: 1 MiB echoed in {elapsed:.2f}s (process start, meeting and transfer)")


def test_pipe_time_to_first_byte(lab):
    started = time.monotonic()
    proc = subprocess.Popen(
        (lab["b"].prefix or [])
        + CLI
        + ["pipe", "-q", "--to", lab["a"].peer_id, "--port", str(lab["services"]["closer"])],
        env=lab["b"].env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    ttfb = time.monotonic() - started
    rest = proc.stdout.read()
    assert first + rest == b"bye\n"
    assert proc.wait(10) == 0  # the service closed: pipe ends by itself, stdin still open
    proc.stdin.close()  # type: ignore[union-attr]  # a pipe was requested
    print(f"\npipe: first byte {ttfb * 1000:.0f} ms after start (process start + meeting + tunnel)")
    assert ttfb < 10


def echo_once(port: int, payload: bytes) -> bytes:
    """Send while receiving (a thread sends), half-close, read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
        sender.join()
    return b"".join(chunks)


def test_twenty_parallel_connections_over_one_peer_connection(lab):
    port = lab["echo_forward_port"]
    payloads = [os.urandom(50_000 + 7919 * i) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda p: echo_once(port, p), payloads))
    for payload, answer in zip(payloads, answers, strict=True):
        assert hashlib.sha256(answer).hexdigest() == hashlib.sha256(payload).hexdigest()
    # more connections than QUIC's initial stream limit (128): finished streams are recycled
    small = [os.urandom(1000 + i) for i in range(200)]
    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(lambda p: echo_once(port, p), small)) == small
    status = json.loads(lab["a"].run("status", "--json").stdout)
    (conn,) = [c for c in status["connections"] if c["peer"] == lab["b"].peer_id and c["tunnels_total"] >= 220]
    assert conn["bytes_from_peer"] >= sum(map(len, payloads))


def test_throughput_forward_vs_direct(lab):
    size = 16 << 20
    payload = os.urandom(size)
    timings = {}
    for name, port in (("direct", lab["services"]["echo"]), ("forward", lab["echo_forward_port"])):
        started = time.monotonic()
        answer = echo_once(port, payload)
        timings[name] = time.monotonic() - started
        assert hashlib.sha256(answer).digest() == hashlib.sha256(payload).digest()
    rates = {name: size * 2 / t / 1e6 for name, t in timings.items()}
    print(
        f"\nthroughput (16 MiB echoed, both directions): direct TCP {rates['direct']:.0f} MB/s, "
        f"through forward {rates['forward']:.1f} MB/s"
    )


def test_close_propagates_both_ways(lab):
    b, a = lab["b"], lab["a"]
    services = lab["services"]
    reporter = services["eof_reporter"]
    forward = forward_to(b, a, services["eof"], name="fwd-eof")
    eof_port = forward.wait_event("listening")["port"]
    forward.wait_event("connected")
    # client half-closes: the service sees EOF, still answers, and then the client sees EOF
    with socket.create_connection(("127.0.0.1", eof_port), timeout=10) as sock:
        sock.sendall(b"x" * 12345)
        sock.shutdown(socket.SHUT_WR)
        assert reporter.eofs.get(timeout=10) == 12345
        answer = b""
        while data := sock.recv(100):
            answer += data
        assert answer == b"got 12345"
    # client closes outright: the service sees EOF
    with socket.create_connection(("127.0.0.1", eof_port), timeout=10) as sock:
        sock.sendall(b"abc")
    assert reporter.eofs.get(timeout=10) == 3
    forward.stop()
    # the service closes: the client sees EOF right after the data
    forward = forward_to(b, a, services["closer"], name="fwd-close")
    close_port = forward.wait_event("listening")["port"]
    with socket.create_connection(("127.0.0.1", close_port), timeout=10) as sock:
        got = b""
        while data := sock.recv(100):
            got += data
        assert got == b"bye\n"
    forward.stop()


def test_peer_not_in_the_allow_list_is_refused(lab):
    c: Node = lab["c"]
    started = time.monotonic()
    result = c.run("pipe", "--to", lab["a"].peer_id, "--port", str(lab["services"]["echo"]), "--timeout", "3")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "not found" in line and c.peer_id in line and "allow list" in line
    assert result.stdout == ""
    assert time.monotonic() - started < 15


def test_secret_meeting_and_refusal_of_a_stranger_who_knows_it(lab, tmp_path):
    beacon = lab["beacon"]
    d = Node(tmp_path / "d", [beacon])
    try:
        expose = d.start(
            "expose",
            str(lab["services"]["echo"]),
            "--allow",
            lab["b"].peer_id,
            "--json",
            "--secret",
            "correct horse battery staple",
            "--control",
            str(tmp_path / "d.sock"),
            name="expose-secret",
        )
        expose.wait_event("exposing")
        secret = {"DISCRETPEER_SECRET": "correct horse battery staple"}
        ok = lab["b"].run("pipe", "--to", d.peer_id, input="hello\n", env=secret)
        assert ok.returncode == 0 and ok.stdout == "hello\n", ok.stderr
        stranger = lab["c"].run("pipe", "--to", d.peer_id, "--timeout", "5", input="hello\n", env=secret)
        assert stranger.returncode == 1 and stranger.stdout == ""
        assert "refused us" in one_error_line(stranger.stderr)
        # without the secret B does not find D (D listens only on the secret meeting)
        lost = lab["b"].run("pipe", "--to", d.peer_id, "--timeout", "2", input="x")
        assert lost.returncode == 1 and "not found" in one_error_line(lost.stderr)
    finally:
        d.stop_all()


def test_a_peer_allowed_one_port_sees_only_that_port(lab, tmp_path):
    """allow = ["B:ECHO"]: B reaches the echo service (even without --port: it is the only port
    B sees), and another exposed port does not exist for B; C, allowed everything, reaches both."""
    beacon, b, c = lab["beacon"], lab["b"], lab["c"]
    echo, eof = lab["services"]["echo"], lab["services"]["eof"]
    d = Node(tmp_path / "d", [beacon], allow=[f"{b.peer_id}:{echo}", c.peer_id])
    try:
        expose = d.start(
            "expose", str(echo), str(eof), "--json", "--control", str(tmp_path / "d.sock"), name="expose-ports"
        )
        expose.wait_event("exposing")
        ok = b.run("pipe", "--to", d.peer_id, input="b\n")
        assert ok.returncode == 0 and ok.stdout == "b\n", ok.stderr
        other = b.run("pipe", "--to", d.peer_id, "--port", str(eof), input="x")
        assert other.returncode == 1 and other.stdout == ""
        line = one_error_line(other.stderr)
        assert f"NOT_EXPOSED: port {eof} is not exposed (exposed: {echo})" in line
        assert c.run("pipe", "--to", d.peer_id, "--port", str(echo), input="c\n").stdout == "c\n"
        ambiguous = c.run("pipe", "--to", d.peer_id, input="c\n")
        assert "AMBIGUOUS_PORT" in one_error_line(ambiguous.stderr)
    finally:
        d.stop_all()


def test_sighup_reloads_the_allow_list_without_a_restart(lab, tmp_path):
    """The allow list lives in the config file; SIGHUP applies an edited one: a newly allowed
    peer gets in, a removed one is refused, the process (and its peer id) stays; a broken
    config is refused with one line and changes nothing."""
    beacon, b, c = lab["beacon"], lab["b"], lab["c"]
    d = Node(tmp_path / "d", [beacon], allow=[b.peer_id])
    config = d.home / ".config" / "discretpeer" / "config.toml"
    original = config.read_text()
    echo = str(lab["services"]["echo"])
    try:
        expose = d.start("expose", echo, "--json", "--control", str(tmp_path / "d.sock"), name="expose-reload")
        expose.wait_event("exposing")
        assert b.run("pipe", "--to", d.peer_id, input="b1\n").stdout == "b1\n"
        refused = c.run("pipe", "--to", d.peer_id, "--timeout", "3", input="c1\n")
        assert refused.returncode == 1 and refused.stdout == ""

        config.write_text(original.replace(f'allow = ["{b.peer_id}"]', f'allow = ["{b.peer_id}", "{c.peer_id}"]'))
        expose.popen.send_signal(signal.SIGHUP)
        reloaded = expose.wait_event("reloaded")
        assert reloaded["added"] == [c.peer_id] and reloaded["removed"] == []
        welcome = c.run("pipe", "--to", d.peer_id, input="c2\n")
        assert welcome.returncode == 0 and welcome.stdout == "c2\n", welcome.stderr

        config.write_text("allow = [")  # broken: nothing changes
        expose.popen.send_signal(signal.SIGHUP)
        assert "config.toml" in expose.wait_event("reload_failed")["error"]
        assert c.run("pipe", "--to", d.peer_id, input="c3\n").stdout == "c3\n"

        config.write_text(original.replace(f'allow = ["{b.peer_id}"]', f'allow = ["{c.peer_id}"]'))
        expose.popen.send_signal(signal.SIGHUP)
        assert expose.wait_event("reloaded")["removed"] == [b.peer_id]
        gone = b.run("pipe", "--to", d.peer_id, "--timeout", "3", input="b2\n")
        assert gone.returncode == 1 and gone.stdout == ""
        assert expose.popen.poll() is None
    finally:
        d.stop_all()


@pytest.mark.parametrize(
    "which, expected",
    [
        ("dead", "REFUSED: connection to 127.0.0.1:{port} refused"),
        ("other", "NOT_EXPOSED: port {port} is not exposed"),
        (None, "AMBIGUOUS_PORT"),
    ],
)
def test_tunnel_refusals_are_explained(lab, which, expected):
    port = lab["services"]["dead"] if which == "dead" else free_port() if which == "other" else None
    args = ["pipe", "--to", lab["a"].peer_id] + (["--port", str(port)] if port else [])
    result = lab["b"].run(*args, input="data")
    assert result.returncode == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "refused the tunnel" in line and expected.format(port=port) in line


def test_status_shows_the_connection_and_its_path(lab):
    a = lab["a"]
    status = json.loads(a.run("status", "--json").stdout)
    assert status["peer_id"] == a.peer_id and status["allowed"] == [lab["b"].peer_id]
    conns = [c for c in status["connections"] if c["peer"] == lab["b"].peer_id]
    assert conns and all(c["path"] == "direct" and c["remote"].startswith("127.0.0.1:") for c in conns)
    assert status["beacons"][0]["state"] == "connected"
    human = a.run("status")
    assert human.returncode == 0 and "direct" in human.stdout and "connections:" in human.stdout
    sock = a.home / ".config" / "discretpeer" / "expose.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    watch = subprocess.Popen(
        CLI + ["status", "--watch", "--interval", "0.2", "--json"], env=a.env, stdout=subprocess.PIPE, text=True
    )
    assert watch.stdout is not None
    first, second = json.loads(watch.stdout.readline()), json.loads(watch.stdout.readline())
    watch.terminate()
    watch.wait(5)
    assert second["uptime"] >= first["uptime"]


def test_status_of_a_forward_with_a_control_socket(lab, tmp_path):
    """`forward --control PATH` answers `status --control PATH`: where it listens, the peer
    connection's path, tunnels and bytes."""
    a, b = lab["a"], lab["b"]
    control = str(tmp_path / "fwd.sock")
    forward = forward_to(b, a, lab["services"]["echo"], "--control", control, name="forward-status")
    port = forward.wait_event("listening")["port"]
    forward.wait_event("connected")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            chunk = sock.recv(4096)
            assert chunk
            got += chunk
        status = json.loads(b.run("status", "--json", "--control", control).stdout)
        assert status["kind"] == "forward" and status["to"] == a.peer_id
        assert status["listening"] == f"127.0.0.1:{port}"
        assert status["connection"]["path"] == "direct" and status["connection"]["peer"] == a.peer_id
        assert status["totals"]["tunnels_open"] == 1 and status["totals"]["bytes_to_peer"] >= 1000
    human = b.run("status", "--control", control)
    assert human.returncode == 0 and "forwarding 127.0.0.1:" in human.stdout and "path direct" in human.stdout
    assert stat.S_IMODE(os.stat(control).st_mode) == 0o600
    forward.stop()
    gone = b.run("status", "--control", control)
    assert gone.returncode == 1 and "no running expose (or forward --control)" in one_error_line(gone.stderr)


def test_second_expose_on_the_same_control_socket_is_refused(lab):
    result = lab["a"].run("expose", "1", "--allow", lab["b"].peer_id)
    assert result.returncode == 1 and "another discretpeer expose/forward is running" in one_error_line(result.stderr)


def test_forward_reconnects_after_the_peer_connection_drops(lab, tmp_path):
    beacon, services = lab["beacon"], lab["services"]
    e = Node(tmp_path / "e", [beacon])
    f = Node(tmp_path / "f", [beacon])
    try:
        expose = e.start("expose", str(services["echo"]), "--allow", f.peer_id, "--json", name="expose-e1")
        expose.wait_event("exposing")
        forward = f.start("forward", "0", "--to", e.peer_id, "--json", name="forward-f")
        port = forward.wait_event("listening")["port"]
        forward.wait_event("connected")
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.sendall(b"ping")
        assert held.recv(10) == b"ping"
        assert expose.stop() == 0  # clean stop: the peer connection closes at once
        forward.wait_event("disconnected", timeout=10)
        with contextlib.suppress(ConnectionResetError):  # the carried TCP connection ends, not hangs
            assert held.recv(10) == b""
        held.close()
        expose = e.start("expose", str(services["echo"]), "--allow", f.peer_id, "--json", name="expose-e2")
        expose.wait_event("exposing")
        forward.wait_event("connected", timeout=30)
        payload = os.urandom(100_000)
        assert echo_once(port, payload) == payload
    finally:
        e.stop_all()
        f.stop_all()


def test_relay_path_is_reported_by_forward_and_status(lab):
    a, b = lab["a"], lab["b"]
    forward = forward_to(b, a, lab["services"]["echo"], "--relay-only", name="fwd-relay")
    port = forward.wait_event("listening")["port"]
    connected = forward.wait_event("connected", timeout=20)
    assert connected["path"] == "relay"
    payload = os.urandom(200_000)
    assert echo_once(port, payload) == payload
    status = json.loads(a.run("status", "--json").stdout)
    assert any(
        c["peer"] == b.peer_id and c["path"] == "relay" and c["bytes_from_peer"] >= len(payload)
        for c in status["connections"]
    ), status["connections"]
    forward.stop()
