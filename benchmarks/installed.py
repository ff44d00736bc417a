"""The package as users run it: ``pip install .`` into a fresh venv (``.pyc`` files written by pip),
made once per benchmark run, and a copy of ``benchmarks/`` as the only thing on the workers'
``PYTHONPATH`` so ``discretpeer``, ``beacon`` and ``certs`` come from that venv's site-packages,
never from the checkout. Dependencies come from pip's local cache (no new downloads if cached).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT


@dataclass
class Installed:
    python: str  # the venv's interpreter
    root: Path  # holds only a copy of benchmarks/: the workers' cwd and PYTHONPATH
    location: str  # where discretpeer was imported from (site-packages)
    seconds: float
    temp: Path

    def close(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)


def install(log: Path) -> Installed:
    """Build the venv (about 30 s); raises RuntimeError naming the failing step."""
    started = time.perf_counter()
    temp = Path(tempfile.mkdtemp(prefix="dpb-installed-"))
    venv = temp / "venv"
    with open(log, "ab") as out:
        for step in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", f"{ROOT}[fast]"],
        ):
            out.write((" ".join(step) + "\n").encode())
            out.flush()
            result = subprocess.run(step, stdout=out, stderr=out, timeout=600, check=False)
            if result.returncode:
                shutil.rmtree(temp, ignore_errors=True)
                raise RuntimeError(f"installing the package failed at {' '.join(step[-3:])} (see {log})")
    root = temp / "bench"
    shutil.copytree(ROOT / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("results", "__pycache__"))
    python = str(venv / "bin" / "python")
    probe = subprocess.run(
        [
            python,
            "-c",
            "import discretpeer, pathlib; p = pathlib.Path(discretpeer.__file__); "
            "print(p); assert (p.parent / '__pycache__').is_dir(), 'no .pyc'",
        ],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    location = probe.stdout.strip()
    if probe.returncode or "site-packages" not in location:
        shutil.rmtree(temp, ignore_errors=True)
        raise RuntimeError(f"the installed package is not what the workers import: {location} {probe.stderr[-300:]}")
    return Installed(python, root, location, time.perf_counter() - started, temp)


def scratch_libp2p(log: Path) -> tuple[str, Path]:
    """A scratch venv with py-libp2p (never the project's venv): (its python, the temp dir to
    remove). Raises RuntimeError with the reason when it does not install."""
    temp = Path(tempfile.mkdtemp(prefix="dpb-libp2p-"))
    venv = temp / "venv"
    with open(log, "ab") as out:
        for step in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", "libp2p"],
        ):
            out.write((" ".join(step) + "\n").encode())
            out.flush()
            if subprocess.run(step, stdout=out, stderr=out, timeout=900, check=False).returncode:
                shutil.rmtree(temp, ignore_errors=True)
                raise RuntimeError(f"py-libp2p does not install here ({' '.join(step[-2:])} failed, see {log})")
    return str(venv / "bin" / "python"), temp
