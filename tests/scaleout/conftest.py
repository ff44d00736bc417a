"""Fixtures for the scale-out tests: a real redis-server, the beacon test client."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.scaleout.redis_server import RedisServer

_path = Path(__file__).parents[1] / "beacon" / "client.py"
if "beacon_test_client" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("beacon_test_client", _path)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["beacon_test_client"] = _module
    _spec.loader.exec_module(_module)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
