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


def test_the_installed_qh3_is_the_tested_one_and_the_extra_pins_it() -> None:
    assert _qh3.installed_version() in _qh3.TESTED
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["qh3"] == [f"qh3=={_qh3.TESTED[-1]}"]


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
