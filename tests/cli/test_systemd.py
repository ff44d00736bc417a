"""The service units in contrib/systemd: `systemd-analyze verify` accepts them without a warning,
and their command lines (with this venv's programs) run, reload on SIGHUP and stop cleanly."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import Node, Proc, clean_env

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"
BIN = Path(sys.executable).parent
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "DynamicUser": "yes", "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID",
    "RestartPreventExitStatus": "2",
}  # fmt: skip


def installed_copy(name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's program (what `pipx install` puts in /usr/local/bin)."""
    text = (UNITS / name).read_text().replace("/usr/local/bin/", f"{BIN}/")
    path = tmp_path / name
    path.write_text(text)
    return path


def service(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # patched for this test
    parser.read_string((UNITS / name).read_text())
    return dict(parser["Service"])


@pytest.mark.parametrize("name", ["discret-beacon.service", "discretpeer-expose.service"])
def test_units_pass_systemd_analyze_verify(tmp_path, name):
    unit = installed_copy(name, tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr + result.stdout
    # a typo is only a warning for systemd: make sure verify would have told us
    broken = tmp_path / "broken" / name
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSystm="))
    warned = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'ProtectSystm'" in warned.stderr


def test_units_are_hardened():
    beacon, expose = service("discret-beacon.service"), service("discretpeer-expose.service")
    for unit in (beacon, expose):
        for key, value in HARDENING.items():
            assert unit.get(key) == value, key
    assert beacon["AmbientCapabilities"] == beacon["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert beacon["StateDirectory"] == "discret-beacon"
    assert beacon["WorkingDirectory"] == "/var/lib/discret-beacon"
    assert "--dir /var/lib/discret-beacon" in beacon["ExecStart"]
    assert expose["CapabilityBoundingSet"] == "" and "AmbientCapabilities" not in expose
    assert expose["ExecStart"] == "/usr/local/bin/discretpeer expose"


def test_beacon_command_line_runs_reloads_and_stops(tmp_path):
    """ExecStart with the state directory swapped for a temp one: it starts, SIGHUP (ExecReload)
    applies a relay limit without stopping it, a broken file changes nothing, SIGTERM exits 0."""
    argv = shlex.split(service("discret-beacon.service")["ExecStart"].replace("/usr/local/bin/", f"{BIN}/"))
    argv = [str(tmp_path) if a == "/var/lib/discret-beacon" else a for a in argv]
    argv += ["--host", "127.0.0.1", "--port", "0", "--no-ipv6"]
    beacon = Proc(argv, clean_env(tmp_path), tmp_path / "stderr.log")
    try:
        while beacon.next_line(15) != "ready":
            pass
        config = tmp_path / "Beacon.conf.toml"
        config.write_text(
            config.read_text().replace(
                "relay_rate_bytes_per_second = 10000000", "relay_rate_bytes_per_second = 5000000"
            )
        )
        beacon.popen.send_signal(signal.SIGHUP)
        log = tmp_path / "logs" / "beacon.log"
        wait_for(lambda: '"reloaded"' in log.read_text())
        assert '"applied": ["relay_rate_bytes_per_second"]' in log.read_text()
        config.write_text("relay_rate_bytes_per_second = 'fast'\n")
        beacon.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in beacon.stderr())
        assert beacon.popen.poll() is None
        assert beacon.stop(signal.SIGTERM) == 0
        assert "Traceback" not in (tmp_path / "stderr.log").read_text()
    finally:
        beacon.stop()


def test_expose_command_line_runs_with_the_units_environment(tmp_path, beacon):
    """The expose unit's ExecStart and Environment= (config, identity, control socket) work as is."""
    unit = service("discretpeer-expose.service")
    lines = (UNITS / "discretpeer-expose.service").read_text().splitlines()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in lines if line.startswith("Environment="))
    assert set(env) == {"DISCRETPEER_CONFIG", "DISCRETPEER_IDENTITY", "DISCRETPEER_CONTROL"}
    laptop = Node(tmp_path / "laptop", [beacon])
    moved = {key: str(tmp_path / "device" / Path(value).name) for key, value in env.items()}
    (tmp_path / "device").mkdir()
    Path(moved["DISCRETPEER_CONFIG"]).write_text(
        f'beacons = [{{hostname = "{beacon.address}", cert_hash = "{beacon.fingerprint}"}}]\n'
        f'udp_host = "127.0.0.1"\nexpose = [22]\nallow = ["laptop"]\n[peers]\nlaptop = "{laptop.peer_id}"\n'
    )
    argv = shlex.split(unit["ExecStart"].replace("/usr/local/bin/", f"{BIN}/")) + ["--json"]
    expose = Proc(argv, {**clean_env(tmp_path / "nohome"), **moved}, tmp_path / "expose.log")
    try:
        event = expose.wait_event("exposing")
        assert event["allowed"] == [laptop.peer_id] and os.path.exists(moved["DISCRETPEER_IDENTITY"])
        assert event["control"] == moved["DISCRETPEER_CONTROL"]
        expose.popen.send_signal(signal.SIGHUP)
        expose.wait_event("reloaded")
        assert expose.stop(signal.SIGTERM) == 0
    finally:
        expose.stop()


def wait_for(check, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
