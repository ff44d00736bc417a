"""`discretpeer doctor` says when a beacon refused a meeting token of the running expose as full.

Everything real and on loopback: an in-process beacon with two places per token, two peers from
127.0.0.2 and 127.0.0.3 holding both places, a third peer (the "expose") refused with TOKEN_FULL
and serving its status on a real control socket, and the `discretpeer doctor` program run as a
subprocess against them (no network namespace needed)."""

from __future__ import annotations

import asyncio
import json
import sys

from discretpeer import Identity, Peer
from discretpeer.cli.control import ControlServer
from discretpeer.cli.session import describe_beacons
from tests.cli.conftest import ROOT, clean_env
from tests.conftest import crowded_beacon


async def doctor(home, control, beacon) -> dict:
    env = clean_env(home)
    env["DISCRETPEER_BEACONS"] = f"127.0.0.1:{beacon.port}={beacon.fingerprint}"
    env["DISCRETPEER_CONTROL"] = str(control)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "discretpeer.cli",
        "doctor",
        "--no-mdns",
        "--json",
        "--timeout",
        "3",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert b"Traceback" not in stderr, stderr.decode()
    return json.loads(stdout)


async def test_doctor_reports_a_token_refused_as_full(tmp_path):
    meeting = "a crowded meeting"
    async with crowded_beacon(meeting) as (server, entry, _):
        late = Peer(Identity.generate(), entry, host="127.0.0.1")
        control = ControlServer(
            tmp_path / "c" / "expose.sock", lambda: {"kind": "expose", "beacons": describe_beacons(late)}
        )
        try:
            await late.start()
            await control.start()
            quiet = await doctor(tmp_path / "home", control.path, server)
            slots = [c for c in quiet["checks"] if c["check"] == "token slots"]
            assert [c["verdict"] for c in slots] == ["OK"], quiet
            await late.listen(meeting, expect=None)
            for _ in range(100):
                if late.beacon_status[0].tokens_full:
                    break
                await asyncio.sleep(0.02)
            report = await doctor(tmp_path / "home", control.path, server)
            [slots] = [c for c in report["checks"] if c["check"] == "token slots"]
            assert slots["verdict"] == "WARN" and slots["tokens_full"] >= 1
            assert "full" in slots["message"] and f"127.0.0.1:{server.port}" in slots["message"]
        finally:
            await control.close()
            await late.close()
