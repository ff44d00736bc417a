"""The aioquic release check: the tested one passes, any other fails with what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer import aioquic_version


def test_the_installed_aioquic_is_the_tested_one() -> None:
    aioquic_version.check()  # CI installs what pyproject pins


@given(st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True))
def test_any_other_release_is_refused_with_what_to_install(version: str) -> None:
    if version in aioquic_version.TESTED:
        aioquic_version.check(version)
        return
    with pytest.raises(aioquic_version.UntestedAioquic, match=r"pip install 'aioquic==1\.7\.2'"):
        aioquic_version.check(version)


def test_pyproject_pins_exactly_the_tested_release() -> None:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("aioquic")]
    assert pins == [f"aioquic=={aioquic_version.TESTED[-1]}"]


def test_the_check_runs_when_the_quic_stack_is_imported() -> None:
    code = "from importlib import metadata; metadata.version = lambda name: '9.9.9'\nimport discretpeer.endpoint"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "aioquic 9.9.9 is installed" in result.stderr
