"""Config mistakes as a user meets them: `discretpeer` run as a program, one line naming the file."""

from __future__ import annotations

import subprocess

import pytest

from discretpeer.identity import Identity
from tests.cli.conftest import CLI, clean_env

OTHER_ID = Identity.generate().peer_id


def run(tmp_path, argv, config=None):
    path = tmp_path / ".config" / "discretpeer" / "config.toml"
    if config is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config)
    result = subprocess.run(CLI + argv, env=clean_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("discretpeer: error:")]
    return result, errors, path


@pytest.mark.parametrize(
    "config, text",
    [
        ('timeout = "abc"', "'timeout' must be an integer or a number, got 'abc'"),
        ("timeout = -3", "'timeout' must be a positive number of seconds, got -3"),
        ("timeout = nan", "'timeout' must be a positive number of seconds"),
        ('expose = [22, "x"]', "expose: 'x' is neither a port nor host:port"),
        ("expose = [22, 70000]", "expose: invalid port '70000'"),
        ("udp_port = 70000", "'udp_port' must be 0..65535"),
    ],
)
@pytest.mark.parametrize(
    "command", [["doctor", "--no-mdns"], ["expose", "--allow", OTHER_ID], ["forward", "0", "--to", OTHER_ID]]
)
def test_bad_values_name_the_file(tmp_path, config, text, command):
    result, errors, path = run(tmp_path, command, config)
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"discretpeer: error: {path}: ") and text in errors[0], errors


def test_a_fresh_home_gets_no_identity_from_a_command_that_cannot_run(tmp_path):
    key = tmp_path / ".config" / "discretpeer" / "identity.key"
    for argv in (["forward", "0", "--to", OTHER_ID], ["pipe", "--to", OTHER_ID], ["expose", "22", "--allow", OTHER_ID]):
        result, errors, _ = run(tmp_path, argv)
        assert result.returncode == 2 and "no beacon configured" in errors[0], result.stderr
        assert "created a new identity" not in result.stderr
        assert not key.exists(), argv
    made, _, _ = run(tmp_path, ["id"])
    assert made.returncode == 0 and key.exists()


@pytest.mark.parametrize(
    "entry, text",
    [
        ("max_data=-1", "--tuning: tuning max_data must be an integer from 16384 to 1073741824, got -1"),
        ("congestion_control=bbr", "--tuning: tuning congestion_control must be one of reno, cubic, got 'bbr'"),
        ("windows=big", "--tuning: tuning 'windows=big': expected NAME=VALUE"),
        ("path=1gbit", "--tuning: tuning 'path=1gbit': expected path=RATE@RTT, e.g. path=1gbit@80ms"),
        ("path=100gbit@1s", "--tuning: tuning 'path=100gbit@1s': 1.25e+10 B/s over 1000 ms needs windows above"),
    ],
)
def test_a_bad_tuning_flag_is_one_line_and_exit_2(tmp_path, entry, text):
    config = '[[beacons]]\nhostname = "127.0.0.1:9"\ncert_hash = "' + "A" * 43 + '"\n'
    result, errors, _ = run(tmp_path, ["forward", "0", "--to", OTHER_ID, "--tuning", entry], config=config)
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and text in errors[0], result.stderr
