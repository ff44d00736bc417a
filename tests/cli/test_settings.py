"""CLI settings: config file, then environment, then flags; strict validation (no sockets)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs import certificate_fingerprint
from discretpeer.cli import build_parser
from discretpeer.cli.settings import (
    Service,
    load_settings,
    parse_beacon_flag,
    parse_service,
)
from discretpeer.config import ConfigError
from discretpeer.identity import Identity

# fixed values, not fresh keys: they appear in test ids, which must be the same in every
# collection (pytest-xdist's workers each collect the suite and compare)
HASH = certificate_fingerprint(b"the certificate of beacon one")
HASH2 = certificate_fingerprint(b"the certificate of beacon two")
ID1 = Identity(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)).peer_id
ID2 = Identity(Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)).peer_id


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "home" / ".config" / "discretpeer" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), **extra}


def test_defaults_without_any_config(tmp_path):
    s = load_settings(args("id"), env_for(tmp_path))
    base = tmp_path / "home" / ".config" / "discretpeer"
    assert s.config_path is None
    assert s.identity_path == base / "identity.key"
    assert s.control_path == base / "expose.sock"
    assert s.beacons == [] and s.allow == [] and s.lan is False and s.relay is True


def test_config_file_is_read_and_names_resolve(tmp_path):
    write(
        tmp_path,
        f"""
beacons = [{{hostname = "127.0.0.1:4264", cert_hash = "{HASH}"}}]
allow = ["laptop", "{ID2}"]
lan = true
relay = false
timeout = 3
udp_host = "127.0.0.1"
expose = [22, "10.0.0.5:80"]
[peers]
laptop = "{ID1.upper()}"
""",
    )
    s = load_settings(args("forward", "8080", "--to", "laptop"), env_for(tmp_path))
    assert [b.hostname for b in s.beacons] == ["127.0.0.1:4264"]
    assert s.allow == [ID1, ID2]
    assert s.lan is True and s.relay is False and s.timeout == 3.0 and s.udp_host == "127.0.0.1"
    assert s.resolve_peer("laptop") == ID1 and s.resolve_peer(ID2.upper()) == ID2
    assert s.services() == {22: Service("127.0.0.1", 22), 80: Service("10.0.0.5", 80)}


def test_environment_overrides_config_and_flags_override_environment(tmp_path):
    write(tmp_path, f'beacons = [{{hostname = "127.0.0.1:1", cert_hash = "{HASH}"}}]\nallow = ["{ID1}"]\n')
    env = env_for(
        tmp_path,
        DISCRETPEER_BEACONS=f"127.0.0.1:2={HASH}, 127.0.0.1:3={HASH2}",
        DISCRETPEER_ALLOW=ID2,
        DISCRETPEER_LAN="yes",
    )
    s = load_settings(args("expose", "22"), env)
    assert [b.port for b in s.beacons] == [2, 3] and s.allow == [ID2] and s.lan is True
    s = load_settings(
        args("expose", "22", "--beacon", f"127.0.0.1:4={HASH}", "--allow", f"{ID1},{ID2}", "--no-lan"), env
    )
    assert [b.port for b in s.beacons] == [4] and s.allow == [ID1, ID2] and s.lan is False


def test_explicit_config_path_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(args("id", "--config", str(tmp_path / "missing.toml")), env_for(tmp_path))
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(args("id"), env_for(tmp_path, DISCRETPEER_CONFIG=str(tmp_path / "nope.toml")))


def test_allow_entries_may_limit_a_peer_to_some_ports(tmp_path):
    write(
        tmp_path,
        f"""
allow = ["laptop:22", "laptop:80", "{ID2}"]
[peers]
laptop = "{ID1}"
""",
    )
    s = load_settings(args("expose", "22"), env_for(tmp_path))
    assert s.allow == [ID1, ID2]
    assert s.ports_for(ID1) == {22, 80} and s.ports_for(ID2) is None
    # flags replace the list; an entry without a port lifts the limit
    s = load_settings(args("expose", "22", "--allow", f"laptop:22,{ID2}:443", "--allow", "laptop"), env_for(tmp_path))
    assert s.ports_for(ID1) is None and s.ports_for(ID2) == {443}


@pytest.mark.parametrize(
    "text, match",
    [
        ("beacons = [", "invalid TOML"),
        ("alow = []", "unknown key"),
        ("lan = 1", "'lan' must be a boolean"),
        ("timeout = -1", "positive"),
        ("timeout = true", "'timeout' must be an integer or a number"),
        ('allow = ["nobody"]', "neither a name from \\[peers\\]"),
        ("allow = [1]", "list of peer ids"),
        ('beacons = [{hostname = "h:1", cert_hash = "short"}]', "beacons"),
        ('[peers]\nx = "bad"', "peers.x"),
        ("udp_port = 70000", "udp_port"),
        ("expose = [true]", "expose"),
        (f'allow = ["{ID1}:0"]', "port after ':' must be 1..65535"),
        (f'allow = ["{ID1}:22,80"]', "one port per entry"),
        ('allow = ["nobody:22"]', "neither a name from \\[peers\\]"),
        ('web_url = "https://beacon.example.org/"', "'web_url' must start with ws:// or wss://"),
        ("web_url = 3", "'web_url' must be"),
        ('tuning = "path=1gbit@80ms"', "'tuning' must be a list, got 'path=1gbit@80ms'"),
        ("tuning = [1]", "'tuning' must be a list of \"NAME=VALUE\" strings"),
        ('tuning = ["path=1gbit"]', "config.toml: 'tuning': tuning 'path=1gbit': expected path=RATE@RTT"),
        ('tuning = ["max_data=1"]', "'tuning': tuning max_data must be an integer from 16384"),
    ],
)
def test_bad_config_entries_are_one_clear_error(tmp_path, text, match):
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        load_settings(args("expose", "22"), env_for(tmp_path))


@pytest.mark.parametrize(
    "flag", ["127.0.0.1:4264", f"127.0.0.1={HASH}", f"={HASH}", "127.0.0.1:4264=abc", f"[::1:4264={HASH}"]
)
def test_bad_beacon_flags(flag):
    with pytest.raises(ConfigError):
        parse_beacon_flag(flag)


def test_beacon_flag_ipv6_and_duplicates(tmp_path):
    assert parse_beacon_flag(f"[::1]:4264={HASH}").host == "::1"
    with pytest.raises(ConfigError, match="twice"):
        load_settings(
            args("doctor", "--beacon", f"127.0.0.1:1={HASH}", "--beacon", f"127.0.0.1:1={HASH}"), env_for(tmp_path)
        )


def test_services_parse_and_reject_duplicates(tmp_path):
    assert parse_service("22", "127.0.0.1") == Service("127.0.0.1", 22)
    assert parse_service("[::1]:80", "x") == Service("::1", 80)
    s = load_settings(args("expose"), env_for(tmp_path))
    with pytest.raises(ConfigError, match="twice"):
        s.services(["22", "10.0.0.1:22"])
    with pytest.raises(ConfigError, match="invalid port"):
        s.services(["0"])
    assert s.services(["80"], host="192.168.1.2") == {80: Service("192.168.1.2", 80)}


def test_bad_env_bool_and_empty_secret(tmp_path):
    with pytest.raises(ConfigError, match="DISCRETPEER_LAN"):
        load_settings(args("id"), env_for(tmp_path, DISCRETPEER_LAN="maybe"))
    with pytest.raises(ConfigError, match="secret"):
        load_settings(args("pipe", "--to", ID1, "--secret", "  "), env_for(tmp_path))


def test_xdg_config_home_and_tilde_paths(tmp_path):
    env = {"HOME": str(tmp_path / "h"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    s = load_settings(args("id", "--identity", "~/k.key"), env)
    assert s.identity_path == tmp_path / "h" / "k.key"
    assert s.control_path == tmp_path / "xdg" / "discretpeer" / "expose.sock"


def test_light_commands_do_not_load_the_quic_stack():
    """`discretpeer id`, `status` and `--help` start fast: `import discretpeer` and the CLI's entry
    point load no aioquic (the public names are imported on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, discretpeer, discretpeer.cli, discretpeer.cli.status; "
        "assert 'aioquic' not in sys.modules, sorted(m for m in sys.modules if 'aioquic' in m)[:3]; "
        "from discretpeer import Peer, Identity; from discretpeer.proto import wire; assert 'aioquic' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_proxy_key_and_flag_and_beacon_tcp_port(tmp_path):
    write(
        tmp_path,
        f"""
beacons = [{{hostname = "beacon.example.org:4264", cert_hash = "{HASH}", tcp_port = 443}}]
proxy = "http://proxy.lan:3128"
""",
    )
    s = load_settings(args("doctor"), env_for(tmp_path))
    assert s.beacons[0].tcp == 443 and s.beacons[0].proxy == "http://proxy.lan:3128"
    s = load_settings(args("doctor", "--proxy", "http://u:p@other:8080"), env_for(tmp_path))
    assert s.beacons[0].proxy == "http://u:p@other:8080"
    s = load_settings(args("doctor", "--proxy", "none"), env_for(tmp_path))
    assert s.beacons[0].proxy == "none"
    with pytest.raises(ConfigError, match="only http://"):
        load_settings(args("doctor", "--proxy", "socks5://x:1"), env_for(tmp_path))
    write(tmp_path, f'beacons = [{{hostname = "b:4264", cert_hash = "{HASH}", tcp_port = 0}}]\n')
    with pytest.raises(ConfigError, match="tcp_port"):
        load_settings(args("doctor"), env_for(tmp_path))


def test_max_datagram_size_key_and_flag(tmp_path):
    write(tmp_path, f'beacons = [{{hostname = "b:4264", cert_hash = "{HASH}"}}]\nmax_datagram_size = 1350\n')
    assert load_settings(args("doctor"), env_for(tmp_path)).max_datagram_size == 1350
    s = load_settings(args("doctor", "--max-datagram-size", "1472"), env_for(tmp_path))
    assert s.max_datagram_size == 1472  # the flag wins
    with pytest.raises(ConfigError, match="--max-datagram-size: max_datagram_size must be an integer from 1200"):
        load_settings(args("doctor", "--max-datagram-size", "1000"), env_for(tmp_path))
    write(tmp_path, "max_datagram_size = 70000\n")
    with pytest.raises(ConfigError, match="config.toml: max_datagram_size must be an integer from 1200 to 16000"):
        load_settings(args("doctor"), env_for(tmp_path))


def test_the_event_loop_is_chosen_by_the_environment(tmp_path, monkeypatch):
    """DISCRETPEER_LOOP=asyncio|uvloop|auto; anything else is one line naming the variable, exit 2."""
    import asyncio

    from discretpeer.cli import _run

    async def which() -> int:
        return 1 if "uvloop" in type(asyncio.get_running_loop()).__module__ else 0

    monkeypatch.setenv("DISCRETPEER_LOOP", "asyncio")
    assert _run(which()) == 0
    monkeypatch.setenv("DISCRETPEER_LOOP", "uvloop")
    assert _run(which()) == 1
    monkeypatch.setenv("DISCRETPEER_LOOP", "auto")
    assert _run(which()) == 1  # uvloop is installed here (the CLI's default when it is)
    monkeypatch.setenv("DISCRETPEER_LOOP", "trio")
    with pytest.raises(ConfigError, match="DISCRETPEER_LOOP must be auto, uvloop or asyncio, got 'trio'"):
        _run(which())


def test_tuning_key_and_flags_on_top(tmp_path):
    """A long fat path set once in the config file; --tuning adds to it (or re-sizes it)."""
    mib = 1024 * 1024
    write(tmp_path, f'beacons = [{{hostname = "b:4264", cert_hash = "{HASH}"}}]\ntuning = ["path=1gbit@80ms"]\n')
    s = load_settings(args("doctor"), env_for(tmp_path))
    assert (s.tuning.max_stream_data, s.tuning.max_data) == (20 * mib, 40 * mib)
    s = load_settings(args("doctor", "--tuning", "gso=off"), env_for(tmp_path))
    assert (s.tuning.max_stream_data, s.tuning.gso) == (20 * mib, False)  # the flag on top of the file
    s = load_settings(args("doctor", "--tuning", "path=2gbit@100ms"), env_for(tmp_path))
    assert s.tuning.max_stream_data == 48 * mib
