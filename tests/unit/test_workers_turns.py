"""The suite's turns on xdist workers (tests/support/workers.py): a test marked 'alone' runs
while nothing else does, and is not starved by the tests that keep arriving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.support.workers import taking_turns


def _holder(tmp_path: Path, alone: bool, log: list[str], name: str, hold: float) -> threading.Thread:
    def run() -> None:
        with (
            open(tmp_path / "gate.lock", "ab") as gate,
            open(tmp_path / "room.lock", "ab") as room,
            taking_turns(gate, room, alone=alone),
        ):
            log.append(f"{name} in")
            time.sleep(hold)
            log.append(f"{name} out")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_shared_turns_overlap_and_an_alone_turn_waits_for_them_and_goes_before_later_ones(tmp_path: Path) -> None:
    log: list[str] = []
    first = _holder(tmp_path, False, log, "a", 0.4)
    second = _holder(tmp_path, False, log, "b", 0.4)
    time.sleep(0.1)
    assert log == ["a in", "b in"] or log == ["b in", "a in"]  # side by side
    alone = _holder(tmp_path, True, log, "alone", 0.3)
    time.sleep(0.1)
    later = _holder(tmp_path, False, log, "later", 0.1)  # arrives while 'alone' waits
    for thread in (first, second, alone, later):
        thread.join(timeout=5)
    assert sorted(log[2:4]) == ["a out", "b out"], log
    assert log[4:] == ["alone in", "alone out", "later in", "later out"], log
