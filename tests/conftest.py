"""Fixtures shared by the suites: an in-process beacon on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from beacon.config import BeaconConfig
from beacon.server import BeaconServer
from certs import CertificateBundle, create_bundle


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


@pytest.fixture
async def beacon() -> AsyncIterator[BeaconServer]:
    async with running_beacon() as server:
        yield server


@pytest.fixture
def make_beacon() -> Callable[..., Any]:
    return running_beacon
