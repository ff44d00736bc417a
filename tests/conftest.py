"""Fixtures shared by the suites: an in-process beacon on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from beacon.config import BeaconConfig
from beacon.server import BeaconServer
from certs import CertificateBundle, create_bundle
from discretpeer import Identity, Peer
from discretpeer.tokens import MeetingKeys
from tests.support import workers


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    workers.configure(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    with workers.turn(item):
        return (yield)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workers.session_finished(session, exitstatus)
    workers.hand_over_figures(session.config, {"natlab_matrix": _matrix_results()})


def pytest_unconfigure(config: pytest.Config) -> None:
    workers.unconfigure(config)


@asynccontextmanager
async def running_beacon(
    bundle: CertificateBundle | None = None, port: int = 0, **settings: Any
) -> AsyncIterator[BeaconServer]:
    """A real beacon on 127.0.0.1 (IPv4 only), in this event loop."""
    config = BeaconConfig(host="127.0.0.1", port=port, ipv6_enabled=False, **settings)
    server = BeaconServer(config, bundle or create_bundle())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def beacon_entry(server: BeaconServer) -> dict[str, str]:
    """The config entry a peer uses for this beacon."""
    return {"hostname": f"127.0.0.1:{server.port}", "cert_hash": server.fingerprint}


async def crowd_meeting(server: BeaconServer, holders: list[Peer], meeting: str) -> None:
    """Start ``holders`` listening on ``meeting`` and wait (up to 2 s) until each holds both of
    its tokens (this window's and the last): with ``max_peers_per_token`` = len(holders), the
    meeting is then full."""
    for peer in holders:
        await peer.start()
        await peer.listen(meeting, expect=None)
    for _ in range(100):
        if all(len(server.meetings.holders(t)) == len(holders) for t in MeetingKeys.derive(meeting).tokens()):
            break
        await asyncio.sleep(0.02)


@asynccontextmanager
async def crowded_beacon(meeting: str) -> AsyncIterator[tuple[BeaconServer, list[dict[str, str]], list[Peer]]]:
    """A beacon with two places per token, both taken on ``meeting`` by two peers (on 127.0.0.2
    and 127.0.0.3): (the beacon, its config entry, those two peers)."""
    async with running_beacon(max_peers_per_token=2) as server:
        entry = [beacon_entry(server)]
        holders = [Peer(Identity.generate(), entry, host=host) for host in ("127.0.0.2", "127.0.0.3")]
        try:
            await crowd_meeting(server, holders, meeting)
            yield server, entry, holders
        finally:
            for peer in holders:
                await peer.close()


@pytest.fixture
async def beacon() -> AsyncIterator[BeaconServer]:
    async with running_beacon() as server:
        yield server


@pytest.fixture
def make_beacon() -> Callable[..., Any]:
    return running_beacon


def _matrix_results() -> dict[str, Any]:
    """The NAT-lab matrix's results in this process (empty when it did not run here)."""
    import sys

    # pytest may import the module under another name than ``tests.natlab.test_matrix``
    # (and the other natlab test files import it as ``tests.natlab.test_matrix``: merge them all)
    candidates = [m for name, m in list(sys.modules.items()) if name.endswith("test_matrix")]
    results: dict[str, Any] = {}
    for module in dict.fromkeys(candidates):
        results.update(getattr(module, "RESULTS", {}))
    return results


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the NAT-lab traversal matrix (p50 introduction→verified) when it ran (on any worker)."""
    import statistics

    results = _matrix_results()
    for figures in workers.collected_figures(terminalreporter.config):
        for case, entry in figures.get("natlab_matrix", {}).items():
            results.setdefault(case, {"path": entry["path"], "times": []})["times"].extend(entry["times"])
    if not results:
        return
    from tests.natlab import test_matrix  # only where the lab ran (its DELAY_MS names the table)

    rtt = 4 * test_matrix.DELAY_MS
    write = terminalreporter.write_line
    terminalreporter.section(f"NAT lab matrix ({test_matrix.DELAY_MS:g} ms per internet link, peer RTT {rtt:g} ms)")
    write(f"{'case':<44} {'path':<7} {'runs':>4} {'p50 ms':>8} {'p50 RTT':>8} {'max ms':>8}")
    for case, entry in results.items():
        times = entry["times"]
        p50 = statistics.median(times)
        write(f"{case:<44} {entry['path']:<7} {len(times):>4} {p50:>8.0f} {p50 / rtt:>8.1f} {max(times):>8.0f}")
