"""A pytest plugin for the qh3 port (discretpeer._qh3): every Peer created in the test process
runs its peer connections on qh3 (``Tuning.quic_stack``), whatever tuning the test passed.

    .venv/bin/python -m pytest -p tests.qh3_everywhere tests/peer/ -q

Peers of the NAT lab run in their own processes: ``DISCRETPEER_TEST_QUIC_STACK=qh3`` there
(tests/natlab/lab_peer.py). Not collected as tests; see benchmarks/README.md ("The qh3 port") for what
fails on qh3 and why."""

from __future__ import annotations

import dataclasses
from typing import Any

import discretpeer.peer as peer_module
from discretpeer.tuning import DEFAULT_TUNING

_original_init = peer_module.Peer.__init__


def _init_on_qh3(self: peer_module.Peer, *args: Any, **kwargs: Any) -> None:
    kwargs["tuning"] = dataclasses.replace(kwargs.get("tuning", DEFAULT_TUNING), quic_stack="qh3")
    _original_init(self, *args, **kwargs)


peer_module.Peer.__init__ = _init_on_qh3  # type: ignore[method-assign]  # the plugin's whole point
