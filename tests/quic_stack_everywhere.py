"""A pytest plugin to run the suite on the other QUIC stack: every Peer created in the test process
runs its peer connections on ``DISCRETPEER_TEST_QUIC_STACK`` (default ``aioquic``; the library's
default is qh3), whatever tuning the test passed.

    DISCRETPEER_TEST_QUIC_STACK=aioquic .venv/bin/python -m pytest -p tests.quic_stack_everywhere tests/peer/ -q

Peers of the NAT lab run in their own processes and read the same variable (tests/natlab/lab_peer.py).
Tests of one stack's own machinery (aioquic's path-MTU probing) pass their stack explicitly and
are overridden too, so they fail here by design. Not collected as tests."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import discretpeer.peer as peer_module
from discretpeer.quic_stack import load_stack
from discretpeer.tuning import DEFAULT_TUNING

STACK = load_stack(os.environ.get("DISCRETPEER_TEST_QUIC_STACK", "aioquic"))
_original_init = peer_module.Peer.__init__


def _init_on_stack(self: peer_module.Peer, *args: Any, **kwargs: Any) -> None:
    kwargs["tuning"] = dataclasses.replace(kwargs.get("tuning", DEFAULT_TUNING), quic_stack=STACK)
    _original_init(self, *args, **kwargs)


peer_module.Peer.__init__ = _init_on_stack  # type: ignore[method-assign]  # the plugin's whole point
