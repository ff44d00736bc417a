"""``python -m beacon`` as a subprocess: first run, start lines, pinning, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path


from beacon_test_client import BeaconClient
from discretpeer import wire
from discretpeer.beacon_tcp import open_channel
from discretpeer.wire import ErrorCode

ROOT = Path(__file__).resolve().parents[2]


async def run_beacon(*args: str, cwd: Path | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beacon", *args,
        cwd=cwd or ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
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
    fingerprint = next(l.split(": ", 1)[1] for l in lines if l.startswith("certificate hash: "))
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
        "--dir", str(d), "--host", "127.0.0.1", "--port", "0", "--no-ipv6", "--metrics-port", "0",
        "--ready-file", str(ready),
    )
    try:
        lines = await start_lines(process)
        fingerprint, listening = parse(lines)
        assert fingerprint == (d / "certificate_hash.txt").read_text().strip()
        assert listening[0][0] == "127.0.0.1" and len(listening) == 1
        facts = json.loads(ready.read_text())
        assert facts["fingerprint"] == fingerprint and facts["port"] == listening[0][1]
        assert facts["addresses"] == [f"127.0.0.1:{listening[0][1]}"]
        assert any(l.startswith("metrics on http://127.0.0.1:") for l in lines)
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
    again = await run_beacon("--dir", str(d), "--host", "127.0.0.1", "--port", "0", "--no-ipv6")
    try:
        assert parse(await start_lines(again))[0] == fingerprint
        again.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(again.wait(), 10) == 0
    finally:
        if again.returncode is None:
            again.kill()
            await again.wait()


async def test_runs_in_current_directory(tmp_path):
    process = await run_beacon("--host", "127.0.0.1", "--port", "0", "--no-ipv6", cwd=tmp_path)
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
        process = await run_beacon("--dir", str(d), "--host", "127.0.0.1", "--port", "0", "--no-ipv6", *flags)
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
        process = await run_beacon("--dir", str(tmp_path), "--host", "127.0.0.1", "--port",
                                   str(taken.getsockname()[1]), "--no-ipv6")
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert err.decode().splitlines()[-1].startswith("discret-beacon: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err.decode()
