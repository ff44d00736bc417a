"""Settings: strict validation, the template, and the example file at the repository root."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from beacon.config import BeaconConfig, ConfigError, load_config, loopback_config, render_template

ROOT = Path(__file__).resolve().parents[2]


def test_example_file_is_the_template():
    assert (ROOT / "Beacon.conf.toml.example").read_text(encoding="utf-8") == render_template()


def test_template_lists_every_key_with_its_default():
    values = tomllib.loads(render_template())
    followers = {f.name for f in dataclasses.fields(BeaconConfig) if f.metadata.get("follows")}
    assert followers == {"ipv6_port"}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(BeaconConfig()).items()}
    assert values == {k: v for k, v in defaults.items() if k not in followers}
    for f in dataclasses.fields(BeaconConfig):
        commented = "# " if f.name in followers else ""
        assert f"# {f.metadata['doc']}\n{commented}{f.name} = " in render_template()


def test_ipv6_port_follows_port_unless_set(tmp_path):
    """Issue 16: `port = 5000` in the file left the IPv6 listener on 4264."""
    path = tmp_path / "Beacon.conf.toml"
    path.write_text(render_template().replace("\nport = 4264\n", "\nport = 5000\n"))
    assert (load_config(path).port, load_config(path).ipv6_port) == (5000, 5000)
    # the command-line flag moves both too, unless --ipv6-port is given
    assert load_config(path, {"port": 6000}).ipv6_port == 6000
    assert load_config(path, {"port": 6000, "ipv6_port": 7000}).ipv6_port == 7000
    # set explicitly in the file: kept, whatever port says
    path.write_text("port = 5000\nipv6_port = 5001\n")
    assert load_config(path).ipv6_port == 5001
    assert load_config(path, {"port": 6000}).ipv6_port == 5001
    # a file written by an earlier template (ipv6_port = 4264 uncommented, never edited) follows too
    path.write_text("port = 5000\n\n# UDP port for QUIC over IPv6 (0 = any free port).\nipv6_port = 4264\n")
    assert load_config(path).ipv6_port == 5000
    path.write_text("port = 5000\n\n# UDP port for QUIC over IPv6 (0 = any free port).\nipv6_port = 4265\n")
    assert load_config(path).ipv6_port == 4265
    # in code
    assert BeaconConfig().replace(port=5000).ipv6_port == 5000
    assert BeaconConfig().replace(port=5000, ipv6_port=4264).ipv6_port == 4264
    assert BeaconConfig().replace(ipv6_port=1).replace(port=5000).ipv6_port == 1


def test_template_loads_to_defaults(tmp_path):
    path = tmp_path / "Beacon.conf.toml"
    path.write_text(render_template())
    assert load_config(path) == BeaconConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ('port = "4264"\n', "key 'port': expected integer, got string '4264'"),
        ("port = 70000\n", "key 'port': must be between 0 and 65535, got 70000"),
        ("port = -1\n", "key 'port'"),
        ("port = true\n", "key 'port': expected integer, got boolean"),
        ("ipv6_enabled = 1\n", "key 'ipv6_enabled': expected boolean"),
        ('retry = "sometimes"\n', "key 'retry': must be one of 'auto', 'always', 'never'"),
        ('host = "::1"\n', "key 'host': must be an IPv4 address"),
        ("idle_timeout_seconds = nan\n", "key 'idle_timeout_seconds'"),
        ("max_frame_size = 5000\n", "key 'max_frame_size'"),
        ("[relay]\nenabled = true\n", "unknown key 'relay'"),
        ("port = \n", "invalid TOML"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, expected):
    path = tmp_path / "Beacon.conf.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_int_accepted_for_float_and_overrides_validated(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("idle_timeout_seconds = 30\n")
    assert load_config(path).idle_timeout_seconds == 30.0
    assert load_config(path, {"port": 0}).port == 0
    with pytest.raises(ConfigError, match="command line: key 'port'"):
        load_config(path, {"port": 123456})


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_loopback_config():
    config = loopback_config(max_peers_per_token=3)
    assert (config.host, config.port, config.ipv6_enabled, config.max_peers_per_token) == ("127.0.0.1", 0, False, 3)
    with pytest.raises(ConfigError):
        loopback_config(port="x")


def test_extra_tcp_ports_are_checked(tmp_path):
    path = tmp_path / "Beacon.conf.toml"
    path.write_text("tcp_extra_ports = [443, 8443]\n")
    assert load_config(path).tcp_extra_ports == (443, 8443)
    for bad in ("[0]", "[70000]", '["443"]', "443", "[true]"):
        path.write_text(f"tcp_extra_ports = {bad}\n")
        with pytest.raises(ConfigError, match="tcp_extra_ports"):
            load_config(path)
