"""discretpeer.heap: freed buffers stay in the process (no page faults to get them back).
Process-wide, so each case runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
from discretpeer import heap
tuned = heap.keep_freed_memory() if sys.argv[1] == "on" else None
keep = [bytearray(200) for _ in range(2000)]  # long-lived objects low in the heap
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def burst(size):
    blocks = [bytearray(size) for _ in range(2_000_000 // size)]  # touches every page
    del blocks
for size in (65536, 1_000_000):  # warm up
    burst(size)
before = faults()
for _ in range(100):  # a receiver's pattern: buffers made and freed, again and again
    burst(65536)
    burst(1_000_000)
print(tuned, faults() - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_buffers_are_reused_without_page_faults():
    tuned, with_tuning = _faults("on")
    if tuned != "True":
        pytest.skip("this libc has no mallopt to tune (not glibc)")
    _, without = _faults("off")
    assert without > 20_000  # ~490 pages faulted in again per round when the heap top is trimmed
    assert with_tuning < without / 10


def test_keep_freed_memory_is_set_once():
    from discretpeer import heap

    first = heap.keep_freed_memory()
    assert heap.keep_freed_memory() is first
