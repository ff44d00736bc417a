"""The README's runnable example is this repository's examples/hello_peer.py, and it works."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import beacon_entry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hello_peer.py"


def test_readme_shows_the_example_verbatim():
    assert EXAMPLE.read_text().strip() in (ROOT / "README.md").read_text()


async def test_two_copies_of_the_example_meet(beacon):
    entry = beacon_entry(beacon)
    argv = [sys.executable, str(EXAMPLE), entry["hostname"], entry["cert_hash"], "readme secret", "127.0.0.1"]
    procs = [
        await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
        for _ in range(2)
    ]
    try:
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 40)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
    for (stdout, stderr), proc in zip(outputs, procs, strict=False):
        text = stdout.decode()
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert "connected to " in text and " via direct" in text
        assert "hello from " in text


def test_the_example_without_arguments_prints_its_usage():
    for argv in ([], ["only-a-beacon:4264"], ["a", "b", "c", "d", "e"]):
        run = subprocess.run([sys.executable, str(EXAMPLE), *argv], capture_output=True, timeout=30, cwd=str(ROOT))
        err = run.stderr.decode()
        assert run.returncode == 2, (argv, err)
        assert err.startswith("usage: python examples/hello_peer.py BEACON_HOST:PORT CERT_HASH"), err
        assert "Traceback" not in err and run.stdout == b""
