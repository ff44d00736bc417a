"""The lab's gate: skip with a reason on a machine that cannot make namespaces, fail under CI.

A real machine without the capability is made by running pytest as root with every capability
dropped (setpriv: empty bounding set), so `ip netns add` is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import in_ci, require_natlab
from .lab import REPO_ROOT

pytestmark = pytest.mark.natlab

TARGET = "tests/natlab/test_lab.py::test_build_and_teardown"


def run_without_capabilities(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    if ci is not None:
        env["CI"] = ci
    argv = [
        "setpriv",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--",
        sys.executable,
        "-m",
        "pytest",
        TARGET,
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def can_drop_capabilities() -> None:
    require_natlab()  # this test itself needs a machine where the lab works
    if shutil.which("setpriv") is None:
        if in_ci():
            pytest.fail("setpriv (util-linux) is needed to test the lab's gate")
        pytest.skip("no setpriv (util-linux) to drop capabilities")


@pytest.mark.parametrize("ci", [None, "true"])
def test_gate(can_drop_capabilities: None, ci: str | None) -> None:
    result = run_without_capabilities(ci)
    out = result.stdout + result.stderr
    print(f"\nCI={ci!r}: exit {result.returncode}; " + out.strip().splitlines()[-1])
    assert "cannot create a network namespace" in out
    if ci is None:
        assert result.returncode == 0, out
        assert "1 skipped" in out and "NAT lab unavailable" in out
    else:
        assert result.returncode == 1, out
        assert "so this is a failure" in out
