"""Running the suite on several pytest-xdist workers (scripts/test.sh starts two).

The suite mostly waits (on subprocesses, network namespaces, timers), so two workers halve its
wall time. What this module adds to plain xdist:

- A short base directory for ``tmp_path`` (``/tmp/dpt-<pid>``): xdist appends ``popen-gwN/`` to
  it, and the CLI's default control socket under a test's ``$HOME`` must stay within the 100
  bytes a Unix socket path may have. Removed after a run that passed; kept (and named) after one
  that failed.
- Turns: a test marked ``alone`` (it asserts how long something takes, or loads both cores)
  runs while no other test runs on any worker; the others run side by side. Two ``flock``
  locks: everyone passes a gate (held only while taking the room), then takes the room shared,
  or exclusive when ``alone`` — so a waiting ``alone`` test is never starved by the others.
- Figures a worker collected for the terminal summary (the NAT-lab matrix) are handed to the
  controller through a file in the shared base directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

ALONE = "alone"
_FIGURES = "figures-{worker}.json"
_OWN_BASE = pytest.StashKey[Path]()
_EXIT_STATUS = pytest.StashKey[int]()
_LOCKS = pytest.StashKey[tuple[IO[bytes], IO[bytes]]]()


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller_of_workers(config: pytest.Config) -> bool:
    """True in the process that starts xdist workers (not in the workers, not in a serial run)."""
    return not is_worker(config) and bool(getattr(config.option, "numprocesses", None))


def shared_directory(config: pytest.Config) -> Path:
    """The base directory every worker of this run shares: the controller's --basetemp (always
    set under xdist, by ``configure`` if not given); xdist gives each worker a directory in it."""
    base = Path(config.option.basetemp)
    return base.parent if is_worker(config) else base


def configure(config: pytest.Config) -> None:
    """Called from the root conftest's pytest_configure (tryfirst: before tmp_path's plugin reads it)."""
    if is_controller_of_workers(config) and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="dpt-", dir=os.environ.get("TMPDIR", "/tmp"))
        config.stash[_OWN_BASE] = Path(config.option.basetemp)


def session_finished(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = exitstatus


def unconfigure(config: pytest.Config) -> None:
    """After the summary: remove the short base directory this run made, unless a test failed."""
    base = config.stash.get(_OWN_BASE, None)
    if base is None:
        return
    if config.stash.get(_EXIT_STATUS, 1) == 0:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"the tests' files are kept in {base}")


def _locks(config: pytest.Config) -> tuple[IO[bytes], IO[bytes]]:
    if _LOCKS not in config.stash:
        shared = shared_directory(config)
        config.stash[_LOCKS] = (open(shared / "gate.lock", "ab"), open(shared / "room.lock", "ab"))  # noqa: SIM115  # held open for the whole run: flock locks belong to the open file
    return config.stash[_LOCKS]


@contextmanager
def turn(item: pytest.Item) -> Iterator[None]:
    """Wait for this test's turn: alone (marked) or beside other tests."""
    if not is_worker(item.config):
        yield
        return
    gate, room = _locks(item.config)
    with taking_turns(gate, room, alone=item.get_closest_marker(ALONE) is not None):
        yield


@contextmanager
def taking_turns(gate: IO[bytes], room: IO[bytes], alone: bool) -> Iterator[None]:
    """Hold ``room`` shared, or exclusive when ``alone``, passing ``gate`` first (each opened by
    its own holder: flock locks belong to the open file)."""
    fcntl.flock(gate, fcntl.LOCK_EX)
    try:
        fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(room, fcntl.LOCK_UN)


def hand_over_figures(config: pytest.Config, figures: dict[str, Any]) -> None:
    """In a worker: leave ``figures`` for the controller's terminal summary."""
    if is_worker(config) and figures:
        worker = config.workerinput["workerid"]  # type: ignore[attr-defined]  # set by pytest-xdist on its workers
        (shared_directory(config) / _FIGURES.format(worker=worker)).write_text(json.dumps(figures))


def collected_figures(config: pytest.Config) -> list[dict[str, Any]]:
    """In the controller: what each worker handed over."""
    if not is_controller_of_workers(config):
        return []
    return [json.loads(path.read_text()) for path in sorted(shared_directory(config).glob(_FIGURES.format(worker="*")))]
