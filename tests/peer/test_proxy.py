"""The beacon's TLS/TCP path through HTTP CONNECT proxies: a real tinyproxy on loopback (plain,
with basic auth, and refusing the port), a proxy that never answers, and one that intercepts TLS.
Every failure is one line naming the proxy and what happened, within the connect timeout."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from beacon.tcp_service import server_context
from certs import create_bundle
from discretpeer import Identity, Peer
from discretpeer.beacon_tcp import TlsPinMismatch, open_channel
from discretpeer.config import BeaconSpec
from discretpeer.proxy import ProxyError, ProxySpec, connect_request, proxy_for
from tests.conftest import beacon_entry
from tests.peer.test_tcp_fallback import tcp_only_entry
from tests.support.peers import carried, connect_both
from tests.support.processes import stop_process

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
# a missing tinyproxy skips on a developer machine (scripts/test.sh installs it as root); under CI it fails
pytestmark = pytest.mark.skipif(
    not Path(TINYPROXY).exists() and not os.environ.get("CI"),
    reason="tinyproxy is not installed (scripts/test.sh installs it)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tinyproxy(tmp_path: Path, *extra: str):
    """A real tinyproxy on 127.0.0.1 (foreground, stopped at the end)."""
    port = free_port()
    conf = tmp_path / f"tinyproxy-{port}.conf"
    conf.write_text(
        "\n".join(
            [
                f"Port {port}",
                "Listen 127.0.0.1",
                "Timeout 30",
                "MaxClients 50",
                "Allow 127.0.0.1",
                "LogLevel Info",
                *extra,
            ]
        )
        + "\n"
    )
    log = open(tmp_path / f"tinyproxy-{port}.log", "wb")  # noqa: SIM115 - the log file lives as long as the tinyproxy process, closed at teardown
    process = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 5
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, (tmp_path / f"tinyproxy-{port}.log").read_text()
            assert time.monotonic() < deadline, "tinyproxy did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
        log.close()


def test_proxy_settings_from_the_environment():
    env = {"HTTPS_PROXY": "http://u:p%40ss@proxy.lan:8080", "NO_PROXY": "localhost,.internal,10.0.0.0/8"}
    spec = proxy_for("beacon.example.org", None, env)
    assert spec == ProxySpec("proxy.lan", 8080, "u", "p@ss")
    assert proxy_for("b.internal", None, env) is None
    assert proxy_for("10.1.2.3", None, env) is None
    assert proxy_for("beacon.example.org", "none", env) is None
    assert proxy_for("x", None, {"https_proxy": "proxy:3128"}) == ProxySpec("proxy", 3128)
    assert b"Proxy-Authorization: Basic dTpwQHNz" in connect_request("b", 443, spec)
    with pytest.raises(ValueError, match="only http://"):
        ProxySpec.parse("socks5://proxy:1080")


async def test_peer_behind_tinyproxy_reaches_the_beacon_and_a_peer(beacon, tmp_path):
    with tinyproxy(tmp_path) as url:
        ia, ib = Identity.generate(), Identity.generate()
        spec = dataclasses.replace(BeaconSpec.parse(tcp_only_entry(beacon)), proxy=url)
        async with (
            Peer(ia, [spec], host="127.0.0.1", direct=False) as pa,
            Peer(ib, [beacon_entry(beacon)], host="127.0.0.1") as pb,
        ):
            ca, cb = await connect_both(pa, pb, "via proxy", 15)
            assert pa.beacon_status[0].transport == "tcp via proxy"
            assert ca.path == "relay"
            payload = os.urandom(100_000)
            assert await carried(ca, cb, payload) == payload


async def test_proxy_with_basic_auth(beacon, tmp_path):
    with tinyproxy(tmp_path, "BasicAuth alice s3cret") as url:
        proxy = ProxySpec.parse(url)
        with pytest.raises(ProxyError) as error:
            await open_channel("127.0.0.1", beacon.tcp_port, beacon.fingerprint, proxy=proxy)
        assert "407" in str(error.value) and proxy.display in str(error.value) and "credentials" in str(error.value)
        good = ProxySpec.parse(url.replace("http://", "http://alice:s3cret@"))
        channel = await open_channel("127.0.0.1", beacon.tcp_port, beacon.fingerprint, proxy=good)
        channel.close()


@pytest.mark.alone  # times asserted
async def test_proxy_refusing_the_port_says_so_at_once(beacon, tmp_path):
    with tinyproxy(tmp_path, "ConnectPort 443") as url:
        spec = ProxySpec.parse(url)
        started = time.monotonic()
        with pytest.raises(ProxyError) as error:
            await open_channel("127.0.0.1", beacon.tcp_port, beacon.fingerprint, proxy=spec)
        assert time.monotonic() - started < 2
        text = str(error.value)
        assert "403" in text and spec.display in text and "\n" not in text


async def test_silent_proxy_times_out_with_one_line():
    async def silent(reader, writer):
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = ProxySpec("127.0.0.1", port)
        with pytest.raises(ProxyError, match=f"proxy 127.0.0.1:{port} did not answer CONNECT .* within 0.5 s"):
            await open_channel("127.0.0.1", 9, create_bundle().fingerprint, proxy=spec, timeout=0.5)
    finally:
        server.close()


async def test_intercepting_proxy_fails_the_pin_and_is_named(beacon):
    """A "TLS inspection" proxy: answers CONNECT, then presents its own certificate."""
    interceptor = server_context(create_bundle())

    async def intercept(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(Exception):
            await writer.start_tls(interceptor)
            await reader.read(100)
        writer.close()

    server = await asyncio.start_server(intercept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = ProxySpec("127.0.0.1", port)
        with pytest.raises(TlsPinMismatch, match=f"proxy 127.0.0.1:{port} intercepts TLS"):
            await open_channel("127.0.0.1", beacon.tcp_port, beacon.fingerprint, proxy=spec)
    finally:
        server.close()


@pytest.mark.alone  # times asserted
async def test_doctor_probe_reports_udp_tcp_and_proxy_paths_with_timings(beacon, tmp_path):
    from discretpeer.beacon_probe import probe_beacon
    from discretpeer.endpoint import Endpoint

    endpoint = await Endpoint.open("127.0.0.1", 0)
    try:
        with tinyproxy(tmp_path) as url:
            spec = dataclasses.replace(BeaconSpec.parse(beacon_entry(beacon)), proxy=url)
            paths = {p.name: p for p in await probe_beacon(spec, endpoint, 3.0)}
            assert set(paths) == {"udp", "tcp", f"tcp via proxy 127.0.0.1:{url.rsplit(':', 1)[1]}"}
            assert all(p.works and 0 < p.seconds < 3 for p in paths.values()), paths
        with tinyproxy(tmp_path, "ConnectPort 443") as url:
            blocked = dataclasses.replace(BeaconSpec.parse(tcp_only_entry(beacon)), proxy=url)
            paths = {p.name.split(" 127")[0]: p for p in await probe_beacon(blocked, endpoint, 1.0)}
            assert not paths["udp"].works and paths["tcp"].works
            assert not paths["tcp via proxy"].works and "403" in paths["tcp via proxy"].error
    finally:
        endpoint.close()
