"""The browser shell in the NAT lab: Chromium behind one NAT, the device behind another, the beacon
(page, signalling, STUN) and coturn on the "internet". Direct (port-restricted on both sides) and
relayed (symmetric on both sides, through coturn). No shell byte crosses any link in clear."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .lab import Lab

pytestmark = [pytest.mark.natlab, pytest.mark.slow, pytest.mark.alone]  # times asserted, Chromium

BEACON = "203.0.113.10"
WEB_PORT = 8443
TURN_PORT = 3478
SECRET = "lab-turn-secret"
SHELL = "/bin/sh -c \"PS1='dp$ ' exec /bin/sh -i\""


def _start_beacon(lab: Lab, workdir: Path) -> None:
    beacon_dir = workdir / "beacon"
    beacon_dir.mkdir()
    (beacon_dir / "Beacon.conf.toml").write_text(
        f'host = "{BEACON}"\nport = 4264\nipv6_enabled = false\nweb_enabled = true\n'
        f'web_host = "{BEACON}"\nweb_port = {WEB_PORT}\nweb_stun_urls = "stun:{BEACON}:4264"\n'
        f'web_turn_urls = "turn:{BEACON}:{TURN_PORT}?transport=udp"\nweb_turn_secret = "{SECRET}"\n'
    )
    beacon = lab.popen("beacon", [sys.executable, "-m", "beacon", "--dir", str(beacon_dir)], name="beacon")
    beacon.wait_for(r"web page on", timeout=20)
    turn = lab.popen(
        "beacon",
        [
            "turnserver",
            "-n",
            f"--listening-ip={BEACON}",
            f"--listening-port={TURN_PORT}",
            f"--relay-ip={BEACON}",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=lab.test",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file=stdout",
            "--simple-log",
            f"--pidfile={workdir / 'turn.pid'}",
        ],
        name="coturn",
    )
    turn.wait_for(r"(?i)(listener opened|Total General servers|IPv4. UDP listener)", timeout=10)


def _run(lab: Lab, flavour: str, *, relay: bool, tmp_path: Path, expect: str, delay_ms: float = 0) -> dict:
    lab.add_public("beacon", BEACON)
    lab.add_home("A", flavour)
    lab.add_home("B", flavour)
    if delay_ms:
        lab.set_delay(delay_ms)
    _start_beacon(lab, tmp_path)
    url = f"ws://{BEACON}:{WEB_PORT}/ws"
    env = {"HOME": str(tmp_path / "device-home")}
    cli = [sys.executable, "-m", "discretpeer.cli", "web"]
    serve = lab.popen(
        "B1", [*cli, "serve", "--url", url, "--name", "labbox", "--command", SHELL], env=env, name="serve"
    )
    serve.wait_for("answering paired browsers", timeout=20, stream="stderr")
    invite = lab.popen("B1", [*cli, "invite", "--url", url, "--name", "labbox"], env=env, name="invite")
    code = invite.wait_for(r"pairing code: (\S+)", timeout=20, stream="stderr").group(1)
    marker = "zq" + expect
    with lab.capture("A") as capture_a, lab.capture("B") as capture_b:
        browser = lab.popen(
            "A1",
            [
                sys.executable,
                "-m",
                "tests.web.lab_browser",
                f"http://{BEACON}:{WEB_PORT}/",
                code,
                "--marker",
                marker,
                "--expect-path",
                expect,
                *(["--relay"] if relay else []),
            ],
            name="browser",
            env={"HOME": str(tmp_path / "browser-home")},
        )
        browser.wait(120)
    result = json.loads(browser.stdout.strip().splitlines()[-1])
    assert result.get("ok"), (result, browser.stderr[-2000:])
    for capture in (capture_a, capture_b):
        # the typed command and its output only ever cross the links inside DTLS
        assert capture.packets, "the capture saw nothing"
        for text in (f"{marker}-$((6*7))", f"{marker}-42", "dp$ "):
            assert not capture.payload_contains(text.encode()), f"{text!r} in clear on a link"
    print(f"\n{flavour}: {json.dumps(result)}")
    return result


def test_direct_port_restricted_both_sides(lab: Lab, tmp_path: Path) -> None:
    result = _run(lab, "port_restricted", relay=False, tmp_path=tmp_path, expect="direct")
    assert result["path"] == "direct", json.dumps(result)


def test_relayed_through_coturn_symmetric_both_sides(lab: Lab, tmp_path: Path) -> None:
    result = _run(lab, "symmetric", relay=False, tmp_path=tmp_path, expect="relay")
    assert result["path"] == "relay", json.dumps(result)


def test_direct_with_20ms_links_prompt_and_keystroke_latency(lab: Lab, tmp_path: Path) -> None:
    """The issue's targets, one sample of the page-open time and the median of 10 keystrokes, 20 ms
    one way on every internet link (browser <-> device RTT 80 ms)."""
    result = _run(lab, "port_restricted", relay=False, tmp_path=tmp_path, expect="direct", delay_ms=20)
    assert result["path"] == "direct", json.dumps(result)
    # measured 1.31-1.33 s here (target p50 <= 1.5 s); the bound leaves room for a loaded CI machine
    assert result["open_to_prompt_ms"] < 3000, json.dumps(result)
    assert result["keystroke_echo_ms"] <= result["rtt_ms"] + 10 + 20, json.dumps(result)  # + slack for CI
