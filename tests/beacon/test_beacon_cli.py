"""``python -m beacon`` as a subprocess: first run, start lines, pinning, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from beacon_test_client import BeaconClient

from discretpeer.beacon_tcp import open_channel
from discretpeer.proto import wire
from discretpeer.proto.wire import ErrorCode
from tests.support.processes import LOOPBACK_BEACON

ROOT = Path(__file__).resolve().parents[2]


async def run_beacon(*args: str, cwd: Path | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "beacon",
        *args,
        cwd=cwd or ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def start_lines(process: asyncio.subprocess.Process) -> list[str]:
    lines = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode().rstrip("\n")
        assert line, f"beacon exited early: {(await process.stderr.read()).decode()}"
        lines.append(line)
        if line == "ready":
            return lines


def parse(lines: list[str]) -> tuple[str, list[tuple[str, int]]]:
    fingerprint = next(line.split(": ", 1)[1] for line in lines if line.startswith("certificate hash: "))
    listening = []
    for line in lines:
        if line.startswith("listening on "):
            host, port = line.removeprefix("listening on ").rsplit(":", 1)
            listening.append((host.strip("[]"), int(port)))
    return fingerprint, listening


async def test_run_pin_metrics_and_sigterm(tmp_path):
    d = tmp_path / "beacon"
    ready = tmp_path / "ready.json"
    process = await run_beacon(
        "--dir",
        str(d),
        *LOOPBACK_BEACON,
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
    )
    try:
        lines = await start_lines(process)
        fingerprint, listening = parse(lines)
        assert fingerprint == (d / "certificate_hash.txt").read_text().strip()
        assert listening[0][0] == "127.0.0.1" and len(listening) == 1
        facts = json.loads(ready.read_text())
        assert facts["fingerprint"] == fingerprint and facts["port"] == listening[0][1]
        assert facts["addresses"] == [f"127.0.0.1:{listening[0][1]}"]
        assert any(line.startswith("metrics on http://127.0.0.1:") for line in lines)
        # TLS over TCP on the same port number, same pin
        assert f"tls over tcp on 127.0.0.1:{listening[0][1]}" in lines
        assert facts["tcp_addresses"] == [f"127.0.0.1:{listening[0][1]}"]

        client = await BeaconClient.connect(listening[0], fingerprint)
        client.send(wire.Ping(nonce=7))
        assert (await client.expect(wire.Pong)).nonce == 7

        host, port = facts["metrics"].removeprefix("http://").split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        assert "beacon_connections_total 1.0" in body
        channel = await open_channel("127.0.0.1", listening[0][1], fingerprint)
        channel.close()

        process.send_signal(signal.SIGTERM)
        error = await client.expect(wire.Error, timeout=5)
        assert error.code == ErrorCode.SHUTTING_DOWN
        assert await asyncio.wait_for(process.wait(), 10) == 0
        await client.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not ready.exists()
    log = (d / "logs" / "beacon.log").read_text()
    assert '"event": "beacon_started"' in log and '"event": "beacon_stopped"' in log
    assert "SIGTERM" in log

    # second run in the same directory: same hash; SIGINT also stops cleanly
    again = await run_beacon("--dir", str(d), *LOOPBACK_BEACON)
    try:
        assert parse(await start_lines(again))[0] == fingerprint
        again.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(again.wait(), 10) == 0
    finally:
        if again.returncode is None:
            again.kill()
            await again.wait()


async def test_runs_in_current_directory(tmp_path):
    process = await run_beacon(*LOOPBACK_BEACON, cwd=tmp_path)
    try:
        fingerprint, _ = parse(await start_lines(process))
        assert (tmp_path / "certificate_hash.txt").read_text() == fingerprint + "\n"
        assert os.stat(tmp_path / "cert_der.bin").st_mode & 0o777 == 0o600
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


CASES = {
    "unknown key": ("Beacon.conf.toml", b"prot = 4264\n", [], ["Beacon.conf.toml", "unknown key 'prot'"]),
    "wrong type": ("Beacon.conf.toml", b'port = "4264"\n', [], ["Beacon.conf.toml", "key 'port'", "expected integer"]),
    "invalid port": ("Beacon.conf.toml", b"port = 65536\n", [], ["Beacon.conf.toml", "key 'port'", "65535"]),
    "invalid TOML": ("Beacon.conf.toml", b"port = = 3\n", [], ["Beacon.conf.toml", "invalid TOML"]),
    "flag": (None, None, ["--ipv6-port", "70000"], ["command line", "key 'ipv6_port'"]),
    "corrupt cert": ("cert_der.bin", b"DPCERT\x00\x01garbage", [], ["cert_der.bin", "truncated"]),
    "foreign cert": ("cert_der.bin", b"-----BEGIN CERTIFICATE-----\n", [], ["cert_der.bin", "bad magic"]),
}


async def test_bad_settings_and_certificates_exit_2(tmp_path):
    async def case(name: str) -> tuple[str, int, str, str]:
        file_name, content, flags, _ = CASES[name]
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        if file_name:
            (d / file_name).write_bytes(content)
        process = await run_beacon("--dir", str(d), *LOOPBACK_BEACON, *flags)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        return name, process.returncode, out.decode(), err.decode()

    results = await asyncio.gather(*(case(name) for name in CASES))
    for name, code, out, err in results:
        file_name, content, _, expected = CASES[name]
        assert code == 2, (name, out, err)
        assert out == "", (name, out)
        assert len(err.splitlines()) == 1 and err.startswith("discret-beacon: error: "), (name, err)
        assert "Traceback" not in err
        for part in expected:
            assert part in err, (name, err)
        if file_name:
            path = tmp_path / name.replace(" ", "_") / file_name
            assert path.read_bytes() == content, f"{name}: {file_name} was overwritten"


async def test_port_in_use_exits_1(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        process = await run_beacon(
            "--dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(taken.getsockname()[1]), "--no-ipv6"
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert err.decode().splitlines()[-1].startswith("discret-beacon: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err.decode()


def test_version_from_package_metadata():
    import importlib.metadata
    import subprocess

    import beacon

    expected = importlib.metadata.version("discretpeer")
    assert beacon.__version__ == expected
    script = Path(sys.executable).with_name("discret-beacon")  # the installed command, next to python
    for argv in ([sys.executable, "-m", "beacon", "--version"], [str(script), "--version"]):
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=30)
        assert run.returncode == 0 and run.stdout.decode() == f"discret-beacon {expected}\n", run


async def _start_lines_and_stop(*args: str) -> list[str]:
    process = await run_beacon(*args)
    try:
        return await start_lines(process)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_prints_the_client_configuration(tmp_path):
    """After start the beacon prints what a client pastes: the --beacon flag and the TOML entry;
    both work as printed (parsed by the peer's own parsers, then a pinned connection)."""
    import tomllib

    from discretpeer.cli.settings import parse_beacon_flag
    from discretpeer.config import parse_beacons

    lines = await _start_lines_and_stop("--dir", str(tmp_path / "a"), *LOOPBACK_BEACON)
    fingerprint, listening = parse(lines)
    port = listening[0][1]
    assert lines[0] == f"certificate hash: {fingerprint}" and lines[1] == f"listening on 127.0.0.1:{port}"
    assert lines[-1] == "ready"
    flag = next(line for line in lines if line.startswith("client flag: "))
    assert flag == f"client flag: --beacon 127.0.0.1:{port}={fingerprint}"
    toml_line = next(line for line in lines if line.startswith("client config: ")).removeprefix("client config: ")
    assert toml_line == f'beacons = [{{hostname = "127.0.0.1:{port}", cert_hash = "{fingerprint}"}}]'
    from_flag = parse_beacon_flag(flag.removeprefix("client flag: --beacon "))
    (from_toml,) = parse_beacons(tomllib.loads(toml_line)["beacons"])
    assert from_flag == from_toml
    assert not any(line.startswith("client note: ") for line in lines)
    firewall = next(line for line in lines if line.startswith("firewall: open "))
    behaviour = next(line for line in lines if line.startswith("nat behaviour on ")).rpartition(":")[2]
    assert firewall == f"firewall: open {port}/udp (QUIC), {behaviour}/udp (NAT behaviour), {port}/tcp (TLS)"

    # every interface: the beacon cannot know its public name, so it says what to put there
    lines = await _start_lines_and_stop("--dir", str(tmp_path / "b"), "--host", "0.0.0.0", "--port", "0", "--no-ipv6")
    fingerprint, listening = parse(lines)
    port = listening[0][1]
    assert f"client flag: --beacon YOUR.HOST:{port}={fingerprint}" in lines
    note = next(line for line in lines if line.startswith("client note: "))
    assert "YOUR.HOST" in note and f"UDP port {port}" in note


async def test_one_line_summary_at_info(tmp_path):
    d = tmp_path / "beacon"
    d.mkdir()
    (d / "Beacon.conf.toml").write_text("summary_interval_seconds = 0.3\n")
    process = await run_beacon("--dir", str(d), *LOOPBACK_BEACON)
    log = d / "logs" / "beacon.log"

    def summaries() -> list[dict]:
        return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "summary"]

    try:
        fingerprint, listening = parse(await start_lines(process))
        a = await BeaconClient.connect(listening[0], fingerprint)
        b = await BeaconClient.connect(listening[0], fingerprint)
        meeting = os.urandom(32)
        a.announce(add=[meeting])
        b.announce(add=[meeting])
        await a.expect(wire.Introduction)
        await b.expect(wire.Introduction)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if any(s["peers"] == 2 for s in summaries()):
                break
        await a.close()
        await b.close()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    lines = summaries()
    seen = next(s for s in lines if s["peers"] == 2)
    assert seen["level"] == "info" and seen["seconds"] == 0.3 and seen["tokens"] == 1
    assert set(seen) >= {
        "peers",
        "tokens",
        "new_connections",
        "introductions",
        "relay_active",
        "relay_sessions",
        "relay_bytes",
    }
    # increases since the previous line, not totals: summed over the lines, each event once
    assert sum(s["new_connections"] for s in lines) == 2
    assert sum(s["introductions"] for s in lines) == 2  # one Introduction frame to each side

    # 0 = off
    (d / "Beacon.conf.toml").write_text("summary_interval_seconds = 0\n")
    log.unlink()
    process = await run_beacon("--dir", str(d), *LOOPBACK_BEACON)
    try:
        await start_lines(process)
        await asyncio.sleep(1.0)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    assert summaries() == []


async def test_ipv6_port_follows_port_from_the_file(tmp_path):
    """Issue 16: `port = N` in Beacon.conf.toml left the IPv6 listener on 4264."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = tmp_path / "beacon"
    d.mkdir()
    from beacon.config import render_template

    (d / "Beacon.conf.toml").write_text(
        render_template()
        .replace("\nport = 4264\n", f"\nport = {port}\n")
        .replace('"0.0.0.0"', '"127.0.0.1"')
        .replace('ipv6_host = "::"', 'ipv6_host = "::1"')
    )
    _, listening = parse(await _start_lines_and_stop("--dir", str(d)))
    assert listening == [("127.0.0.1", port), ("::1", port)]
    # the same for the flag, on the default settings
    _, listening = parse(
        await _start_lines_and_stop(
            "--dir", str(tmp_path / "flag"), "--host", "127.0.0.1", "--ipv6-host", "::1", "--port", str(port)
        )
    )
    assert listening == [("127.0.0.1", port), ("::1", port)]


async def test_full_disk_while_serving_is_one_warning_not_tracebacks(tmp_path):
    """logs/beacon.log → /dev/full (every write fails with ENOSPC, as on a full disk): the beacon
    keeps serving, says so once on stderr, and never prints logging's traceback per record."""
    d = tmp_path / "beacon"
    (d / "logs").mkdir(parents=True)
    (d / "logs" / "beacon.log").symlink_to("/dev/full")
    process = await run_beacon("--dir", str(d), *LOOPBACK_BEACON)
    try:
        fingerprint, listening = parse(await start_lines(process))
        for nonce in range(3):
            client = await BeaconClient.connect(listening[0], fingerprint)
            client.send(wire.Ping(nonce=nonce))
            assert (await client.expect(wire.Pong)).nonce == nonce
            await client.close()
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    text = err.decode()
    assert "Traceback" not in text and "Logging error" not in text, text
    warnings = [line for line in text.splitlines() if line.startswith("discret-beacon: warning: ")]
    assert len(warnings) == 1 and "beacon.log: cannot write the log (No space left on device)" in warnings[0]
    assert "beacon_stopped" in text  # the console still gets every line


async def test_unwritable_ready_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "a_directory").mkdir()
    for target in (tmp_path / "a_directory", tmp_path / "missing" / "ready.json"):
        process = await run_beacon(
            "--dir",
            str(tmp_path / "beacon"),
            *LOOPBACK_BEACON,
            "--ready-file",
            str(target),
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        text = err.decode()
        assert process.returncode == 2, text
        assert out == b"" and "Traceback" not in text
        errors = [line for line in text.splitlines() if line.startswith("discret-beacon: error: ")]
        assert errors == [f"discret-beacon: error: --ready-file {target}: " + errors[0].rsplit(": ", 1)[1]], text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory", "beacon"]  # no temporary file left
