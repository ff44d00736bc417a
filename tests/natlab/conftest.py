"""Fixtures of the NAT lab.

``lab``           a fresh, empty lab (only the core) for one test; build what the test needs.
``standard_lab``  the standard topology (Lab.build_standard), built once per module and reset
                  after each test (processes killed, flavours back to defaults, conntrack
                  flushed, no delay).

Both skip with the reason where the machine cannot make namespaces, but FAIL when the
environment variable CI is set (CI must never skip the lab silently).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from .lab import Lab, unavailable_reason

STANDARD_FLAVOURS = {
    "A": ("port_restricted", False),
    "B": ("port_restricted", False),
    "C": ("port_restricted", True),
    "D": ("port_restricted", False),
    "E": ("port_restricted", False),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_natlab() -> None:
    """Skip (or fail under CI) when this machine cannot run the NAT lab."""
    reason = unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(
            f"NAT lab unavailable and CI={os.environ.get('CI')!r}, so this is a failure: {reason}", pytrace=False
        )
    print(f"NAT lab unavailable: {reason}", file=sys.stderr)
    pytest.skip(f"NAT lab unavailable: {reason}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    report = yield
    setattr(item, f"natlab_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "natlab_rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_natlab()
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        if _failed(request):
            print("NAT lab processes at failure:\n" + the_lab.report())
        the_lab.close()


@pytest.fixture(scope="module")
def _standard_lab_module() -> Iterator[Lab]:
    require_natlab()
    the_lab = Lab()
    try:
        the_lab.build_standard()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def standard_lab(request: pytest.FixtureRequest, _standard_lab_module: Lab) -> Iterator[Lab]:
    the_lab = _standard_lab_module
    first = len(the_lab.processes)
    try:
        yield the_lab
    finally:
        if _failed(request):
            print("NAT lab processes at failure:\n" + the_lab.report(since=first))
        the_lab.kill_processes(since=first)
        for router, (flavour, hairpin) in STANDARD_FLAVOURS.items():
            if the_lab.flavour(router) != (flavour, hairpin):
                the_lab.set_flavour(router, flavour, hairpin)
        if the_lab.link_delay("beacon") or any(the_lab.link_delay(n) for n in ("A", "B", "C", "pub2")):
            the_lab.set_delay(0)
        the_lab.flush_conntrack()
