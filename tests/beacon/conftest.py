"""Fixtures for the beacon tests: in-process beacons on 127.0.0.1 and the test client."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

# tests/beacon/client.py under a unique module name (other test folders may have a client.py)
_spec = importlib.util.spec_from_file_location("beacon_test_client", Path(__file__).with_name("client.py"))
assert _spec is not None and _spec.loader is not None
_client = importlib.util.module_from_spec(_spec)
sys.modules["beacon_test_client"] = _client
_spec.loader.exec_module(_client)

from beacon import BeaconServer, loopback_config  # noqa: E402 - after the test client module is registered under its unique name
from certs import create_bundle  # noqa: E402 - after the test client module is registered under its unique name

BeaconClient = _client.BeaconClient


@pytest.fixture
def start_beacon() -> Callable[..., contextlib.AbstractAsyncContextManager[BeaconServer]]:
    """``async with start_beacon(**config_changes) as server`` on 127.0.0.1, any free port."""

    @contextlib.asynccontextmanager
    async def start(bundle=None, **changes) -> AsyncIterator[BeaconServer]:
        async with BeaconServer(loopback_config(**changes), bundle or create_bundle()) as server:
            yield server

    return start


@pytest.fixture
async def beacon() -> AsyncIterator[BeaconServer]:
    async with BeaconServer(loopback_config(), create_bundle()) as server:
        yield server


@pytest.fixture
def connect(beacon: BeaconServer):
    """``await connect()`` → a BeaconClient (Hello done) to the ``beacon`` fixture; all closed at the end."""
    clients = []

    async def make(**kwargs):
        client = await BeaconClient.connect(beacon.addresses[0], beacon.fingerprint, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.protocol.close()
        client.endpoint.close()
