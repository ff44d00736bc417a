"""The shared meeting table over TLS, on a real redis-server listening on TLS only (``--port 0
--tls-port``) with a certificate from a test CA made here: beacons on two "machines" meet through
it; an untrusted certificate, a missing password or client certificate, or a plain-text URL on
the TLS port each stop the beacon with one line naming the URL; the settings are checked together."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from beacon import BeaconServer, loopback_config
from beacon.config import ConfigError, load_config
from beacon.store import StoreUnavailable
from certs import create_bundle
from tests.scaleout.processes import ROOT, write_beacon_config
from tests.scaleout.redis_server import RedisServer
from tests.scaleout.test_store_redis import beacons, meet_across
from tests.support.certificates import make_tls_files


@pytest.fixture
def tls_files(tmp_path):
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_redis(tmp_path, tls_files):
    server = RedisServer(tmp_path / "redis", tls=tls_files).start()
    yield server
    server.stop()


async def refused(url: str, **changes) -> str:
    server = BeaconServer(loopback_config(store=url, **changes), create_bundle())
    with pytest.raises(StoreUnavailable) as info:
        await server.start()
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


async def test_peers_on_two_machines_meet_over_tls(tls_redis, tls_files):
    assert tls_redis.url.startswith("rediss://")
    async with beacons(tls_redis.url, store_tls_ca_file=str(tls_files.ca)) as (one, two):
        assert one.fingerprint == two.fingerprint and one.port != two.port
        assert one.store.connected and two.store.connected
        await meet_across(one, two)


@pytest.mark.parametrize(
    ("scheme", "store_tls"),
    [("rediss", False), ("redis", True), ("valkeys", False), ("valkey", True)],
)
async def test_tls_from_the_url_or_the_option(tls_redis, tls_files, scheme, store_tls):
    """rediss:// (valkeys://) is TLS by itself; store_tls = true makes redis:// (valkey://) TLS."""
    url = f"{scheme}://127.0.0.1:{tls_redis.port}/0"
    async with beacons(url, store_tls=store_tls, store_tls_ca_file=str(tls_files.ca)) as (one, two):
        await meet_across(one, two)


async def test_untrusted_certificate_is_one_line_naming_the_url(tls_redis, tmp_path):
    wrong = make_tls_files(tmp_path / "another-ca")  # a CA that did not sign redis's certificate
    text = await refused(tls_redis.url, store_tls_ca_file=str(wrong.ca))
    assert text.startswith(f"cannot reach the store {tls_redis.url}: its TLS certificate was not trusted")
    assert str(wrong.ca) in text
    # no CA file: the system's CAs do not know the test CA either
    text = await refused(tls_redis.url)
    assert "its TLS certificate was not trusted" in text and "the system's CAs" in text


async def test_certificate_for_another_name_is_not_trusted(tmp_path):
    tls = make_tls_files(tmp_path / "tls", names=("redis.example.org",))
    with RedisServer(tmp_path / "redis", tls=tls) as redis:
        text = await refused(redis.url, store_tls_ca_file=str(tls.ca))
    assert "its TLS certificate was not trusted" in text and "127.0.0.1" in text


async def test_plain_url_on_the_tls_port_says_so(tls_redis):
    url = f"redis://127.0.0.1:{tls_redis.port}/0"
    text = await refused(url)
    assert text.startswith(f"cannot reach the store {url}: ") and "rediss://" in text


async def test_password_and_tls(tmp_path, tls_files):
    with RedisServer(tmp_path / "redis", password="s3cret", tls=tls_files) as redis:
        ca = str(tls_files.ca)
        text = await refused(redis.url, store_tls_ca_file=ca)  # no password: refused after the handshake
        assert text == f"cannot reach the store {redis.url}: it asks for a password (store_password)"
        # a wrong password in the URL: refused, and never shown
        url = f"rediss://:wrong-one@127.0.0.1:{redis.port}/0"
        text = await refused(url, store_tls_ca_file=ca)
        assert "wrong-one" not in text and f"rediss://:***@127.0.0.1:{redis.port}/0" in text
        assert "the password was refused" in text
        async with beacons(redis.url, store_password="s3cret", store_tls_ca_file=ca) as (one, two):
            await meet_across(one, two)
        password_url = f"rediss://:s3cret@127.0.0.1:{redis.port}/0"
        async with beacons(password_url, store_tls_ca_file=ca) as (one, two):
            await meet_across(one, two)


async def test_client_certificate_when_the_store_asks_for_one(tmp_path, tls_files):
    client = make_tls_files(tmp_path / "client", names=("beacon",), client=True)
    with RedisServer(tmp_path / "redis", tls=tls_files, auth_clients="yes", client_ca=client.ca) as redis:
        ca = str(tls_files.ca)
        text = await refused(redis.url, store_tls_ca_file=ca)
        assert text.startswith(f"cannot reach the store {redis.url}: ") and "client certificate" in text
        files = {"store_tls_cert_file": str(client.cert), "store_tls_key_file": str(client.key)}
        async with beacons(redis.url, store_tls_ca_file=ca, **files) as (one, two):
            await meet_across(one, two)


async def test_python_m_beacon_exits_2_with_one_line(tls_redis, tmp_path):
    """At start, as for an unreachable store: exit 2, one line naming the URL, no traceback (a single
    process, a supervisor of workers, and a CA file that does not exist)."""
    wrong = make_tls_files(tmp_path / "another-ca")
    url = tls_redis.url
    cases = {
        "one process": ({"store": url, "store_tls_ca_file": str(wrong.ca)}, ["not trusted", url, str(wrong.ca)]),
        "workers": (
            {"store": url, "store_tls_ca_file": str(wrong.ca), "workers": 2},
            ["not trusted", url, str(wrong.ca)],
        ),
        "missing CA file": (
            {"store": url, "store_tls_ca_file": str(tmp_path / "nowhere.pem")},
            ["store_tls_ca_file", "no such file", "nowhere.pem"],
        ),
    }

    async def run(name: str, settings: dict) -> tuple[int | None, str, str]:
        directory = tmp_path / name.replace(" ", "-")
        directory.mkdir()
        write_beacon_config(directory, settings)
        scratch = tmp_path / f"{directory.name}-tmp"  # the beacon's TMPDIR: a failed start leaves nothing in it
        scratch.mkdir()
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "beacon", "--dir", str(directory), "--host", "127.0.0.1", "--port", "0"),
            "--no-ipv6",
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(scratch)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert not list(scratch.iterdir()), (name, list(scratch.iterdir()))
        return process.returncode, out.decode(), err.decode()

    results = await asyncio.gather(*(run(name, settings) for name, (settings, _) in cases.items()))
    for (name, (_, expected)), (code, out, err) in zip(cases.items(), results, strict=True):
        assert code == 2, (name, out, err)
        assert "Traceback" not in err, (name, err)
        errors = [line for line in err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("discret-beacon: error: "), (name, err)
        for part in expected:
            assert part in errors[0], (name, errors[0])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"store_tls_ca_file": "{tmp}/nowhere.pem"}, "key 'store_tls_ca_file': no such file, got '{tmp}/nowhere.pem'"),
        ({"store_tls_ca_file": "{tmp}"}, "key 'store_tls_ca_file': cannot read (a directory, expected a regular file)"),
        ({"store_tls_ca_file": "{tmp}/tls/key.pem"}, "key 'store_tls_ca_file': holds no PEM certificate"),
        ({"store_tls_cert_file": "{tmp}/nowhere.pem"}, "key 'store_tls_cert_file': no such file"),
        (
            {"store": "redis://127.0.0.1:6379/0", "store_tls_ca_file": "{tmp}/tls/ca.pem"},
            "key 'store_tls_ca_file': only used with TLS: make store a rediss:// URL or set store_tls = true",
        ),
        ({"store": "unix:///run/redis.sock", "store_tls": True}, "key 'store_tls': TLS needs a TCP URL"),
        ({"store_tls_cert_file": "{tmp}/tls/cert.pem"}, "key 'store_tls_key_file': needed with store_tls_cert_file"),
        ({"store_tls_key_file": "{tmp}/tls/key.pem"}, "key 'store_tls_cert_file': needed with store_tls_key_file"),
        (
            {"store_tls_cert_file": "{tmp}/tls/cert.pem", "store_tls_key_file": "{tmp}/other/key.pem"},
            "key 'store_tls_key_file': {tmp}/other/key.pem and {tmp}/tls/cert.pem are not a certificate and its",
        ),
    ],
)
def test_config_checks_the_tls_files(tmp_path, tls_files, settings, expected):
    make_tls_files(tmp_path / "other")
    values = {"store": "rediss://127.0.0.1:6379/0", **settings}
    values = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in values.items()}
    path = tmp_path / "Beacon.conf.toml"
    write_beacon_config(tmp_path, values)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert expected.format(tmp=tmp_path) in text


def test_config_accepts_tls_files(tmp_path, tls_files):
    client = make_tls_files(tmp_path / "client", client=True)
    settings = {
        "store": "redis://10.0.0.5:6379/0",
        "store_tls": True,
        "store_tls_ca_file": str(tls_files.ca),
        "store_tls_cert_file": str(client.cert),
        "store_tls_key_file": str(client.key),
    }
    write_beacon_config(tmp_path, settings)
    config = load_config(tmp_path / "Beacon.conf.toml")
    assert (config.store_tls_ca_file, config.store_tls_key_file) == (str(tls_files.ca), str(client.key))
    # the TLS settings mean nothing to the in-memory table: left alone there
    assert loopback_config(store_tls=True, store_tls_ca_file=str(tls_files.ca)).store == "memory"
