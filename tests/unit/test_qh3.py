"""discretpeer._qh3: the installed qh3 is the tested release and still has every private name the
adapter relies on; qh3's events and addresses reach the aioquic protocol layer as it expects."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from aioquic.quic import events as aio_events
from qh3.quic import events as qh3_events

from discretpeer import _aioquic, _qh3
from discretpeer.path_mtu import SizedQuicConfiguration
from discretpeer.paths import RouteTable
from discretpeer.tuning import Tuning

ROOT = Path(__file__).parents[2]


def test_the_installed_qh3_is_the_tested_one_and_the_dependency_pins_it() -> None:
    assert _qh3.installed_version() in _qh3.TESTED
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"qh3=={_qh3.TESTED[-1]}" in dependencies


def test_peer_connections_run_on_qh3_by_default_with_a_datagram_size_every_route_carries() -> None:
    assert Tuning().quic_stack == "qh3"
    assert _qh3.qh3_datagram_size(16000) == 1350  # Peer's default cap: no probing, so the safe size
    assert _qh3.qh3_datagram_size(1472) == 1472  # a size the user set is used from the first packet
    assert _qh3.qh3_datagram_size(1280) == 1280


def test_every_private_name_on_the_list_exists_in_the_installed_qh3() -> None:
    assert _aioquic.missing_private_names(_qh3.PRIVATE_API) == {}
    gone = {"qh3.quic.connection.QuicConnection": ("_core", "_no_such_attribute")}
    assert _aioquic.missing_private_names(gone) == {"qh3.quic.connection.QuicConnection": ["_no_such_attribute"]}


def _sample(field: dataclasses.Field) -> object:
    return {"data": b"x", "connection_id": b"c" * 8, "reason_phrase": "r", "alpn_protocol": "a"}.get(field.name, 7)


QH3_EVENTS = [
    cls
    for cls in vars(qh3_events).values()
    if isinstance(cls, type) and issubclass(cls, qh3_events.QuicEvent) and cls is not qh3_events.QuicEvent
]


@pytest.mark.parametrize("cls", QH3_EVENTS, ids=lambda cls: cls.__name__)
def test_every_qh3_event_becomes_aioquics_with_the_same_fields(cls: type) -> None:
    event = cls(**{f.name: _sample(f) for f in dataclasses.fields(cls)})
    translated = _qh3._translate(event)
    assert type(translated) is getattr(aio_events, cls.__name__)
    assert dataclasses.asdict(translated) == dataclasses.asdict(event)


def test_a_virtual_route_address_reaches_the_core_as_a_reserved_ipv4_and_comes_back() -> None:
    config = SizedQuicConfiguration(is_client=True, alpn_protocols=["x"], tuning=Tuning(quic_stack="qh3"))
    connection = _qh3.Qh3Connection(configuration=config)
    virtual = RouteTable().new(direct=("192.0.2.1", 4433)).virtual
    connection.connect(virtual, now=1.0)
    datagrams = connection.datagrams_to_send(now=1.0)
    assert datagrams and all(addr == virtual for _, addr in datagrams)
    assert connection.active_path_address() == virtual
    host, _ = connection._core_address(virtual)
    assert host.startswith("240.")
    assert connection._core_address(("192.0.2.1", 4433)) == ("192.0.2.1", 4433)  # real ones unchanged


@pytest.mark.parametrize(
    ("cap", "route_limit", "expected"),
    [(16000, None, 1350), (16000, 1300, 1300), (1472, None, 1472), (1472, 1463, 1463), (1472, 900, 1200)],
)
def test_the_datagram_size_is_fixed_when_the_core_starts_and_fits_the_route(
    cap: int, route_limit: int | None, expected: int
) -> None:
    """1350 (or the size the user set), no larger than the route's limit (a relay's: its route's
    MTU minus the frame header), never below QUIC's 1200; the client's Initial has that size."""
    config = SizedQuicConfiguration(
        is_client=True, alpn_protocols=["x"], datagram_size_cap=cap, tuning=Tuning(quic_stack="qh3")
    )
    connection = _qh3.Qh3Connection(configuration=config)
    connection.limit_datagram_size(lambda: route_limit)
    connection.connect(("192.0.2.1", 4433), now=1.0)
    datagrams = connection.datagrams_to_send(now=1.0)
    assert connection.datagram_size() == expected
    assert datagrams and max(len(data) for data, _ in datagrams) <= expected


def test_loading_the_stack_pays_its_one_time_costs_before_the_first_handshake() -> None:
    """A fresh process: after ``load_stack("qh3")`` (what Peer() does), the first connection's
    ClientHello costs what any other does; without the warm-up it took ~60 ms more (the crypto
    library's first key exchange), which held the event loop in the middle of a meeting."""
    import subprocess
    import sys

    script = (
        "import time\n"
        "from discretpeer.quic_stack import load_stack\n"
        "load_stack('qh3')\n"
        "from discretpeer._qh3 import Qh3Connection\n"
        "from discretpeer.path_mtu import SizedQuicConfiguration\n"
        "from discretpeer.tuning import Tuning\n"
        "config = SizedQuicConfiguration(is_client=True, alpn_protocols=['x'], tuning=Tuning())\n"
        "started = time.perf_counter()\n"
        "Qh3Connection(configuration=config).connect(('192.0.2.1', 4433), now=1.0)\n"
        "print((time.perf_counter() - started) * 1000)\n"
    )
    first_connect_ms = float(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert first_connect_ms < 25, first_connect_ms
