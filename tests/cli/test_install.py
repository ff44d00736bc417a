"""Installing and running: `python -m discretpeer`, the console script, versions, the licence."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import discretpeer
from tests.cli.conftest import PYTHON, ROOT, clean_env

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_package_metadata():
    assert discretpeer.__version__ == version("discretpeer") == PYPROJECT["project"]["version"]
    assert "__version__" in dir(discretpeer)


def test_python_dash_m_discretpeer_runs_the_command(tmp_path):
    result = subprocess.run(
        [PYTHON, "-m", "discretpeer", "--version"], env=clean_env(tmp_path), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"discretpeer {discretpeer.__version__}\n"
    made = subprocess.run(
        [PYTHON, "-m", "discretpeer", "id", "-q"], env=clean_env(tmp_path), capture_output=True, text=True, timeout=30
    )
    assert made.returncode == 0 and len(made.stdout.strip()) == 52, made.stderr


def test_console_script_has_version(tmp_path):
    script = Path(sys.executable).parent / "discretpeer"
    assert script.exists(), "the package is not installed with its console scripts (pip install -e .)"
    result = subprocess.run(
        [str(script), "--version"], env=clean_env(tmp_path), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"discretpeer \d+\.\d+\.\d+\S*\n", result.stdout)


def test_license_file_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "MIT"
    assert text.startswith("MIT License") and "Copyright (c) 2026 discretpeer contributors" in text
    assert "LICENSE" in PYPROJECT["project"].get("license-files", [])


def test_readme_says_how_to_install():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    for needle in ("pipx install", "pip install", ".whl", "[fast]", "uvloop", "discretpeer --version"):
        assert needle in section, needle


def test_readme_goes_from_zero_to_ssh():
    """Install -> beacon as a service -> invite/accept -> expose -> ping -> ssh, in that order."""
    readme = (ROOT / "README.md").read_text()
    steps = readme.split("From zero", 1)[1].split("\n## ", 1)[0]
    order = [
        "pipx install",
        "contrib/systemd/discret-beacon.service",
        "discretpeer invite",
        "discretpeer accept",
        "discretpeer expose",
        "discretpeer ping",
        "ProxyCommand discretpeer pipe",
    ]
    positions = [steps.find(needle) for needle in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions, strict=True))
