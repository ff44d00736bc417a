"""What a long-running `expose` prints: only what happened (real beacon, real processes)."""

from __future__ import annotations

import signal
import time

from tests.cli.conftest import Node


def test_a_finished_pipe_session_leaves_expose_quiet(beacon, services, tmp_path):
    """After a pipe session ends, expose used to ask the beacon to relay to the departed peer
    every 5 s for half a minute ("no direct path yet: asking the beacon to relay", ~7 lines)."""
    a = Node(tmp_path / "a", [beacon])
    b = Node(tmp_path / "b", [beacon])
    try:
        expose = a.start(
            "expose",
            str(services["echo"]),
            "--allow",
            b.peer_id,
            "--json",
            "-v",
            "--control",
            str(tmp_path / "a.sock"),
            name="expose",
        )
        expose.wait_event("exposing")
        for round_ in range(2):
            done = b.run("pipe", "--to", a.peer_id, input=f"hello {round_}\n")
            assert done.returncode == 0 and done.stdout == f"hello {round_}\n", done.stderr
            expose.wait_event("peer_disconnected")
        time.sleep(7.5)  # the bug: a request 1.5 s after the introduction, then every 5 s
        assert expose.popen.poll() is None
        expose.stop()
        expose.wait_event("stopping")
        names = [event.get("event") for event in expose.events]
        assert names.count("relay_requested") == 0, names
        assert "requesting relay" not in expose.log.read_text()
    finally:
        a.stop_all()


def test_disconnect_on_stop_has_a_reason(lab, tmp_path):
    """Stopping expose while a forward is connected: the peer's line says why, not "(None)"."""
    beacon, b = lab["beacon"], lab["b"]
    d = Node(tmp_path / "d", [beacon], allow=[b.peer_id])
    try:
        expose = d.start(
            "expose", str(lab["services"]["echo"]), "--json", "--control", str(tmp_path / "d.sock"), name="expose-stop"
        )
        expose.wait_event("exposing")
        forward = b.start("forward", "0", "--to", d.peer_id, "--json", name="forward-stop")
        forward.wait_event("connected")
        expose.wait_event("peer_connected")
        assert expose.stop(signal.SIGINT) == 130
        event = expose.wait_event("peer_disconnected")
        assert event["reason"] == "the exposing side is stopping", event
        lost = forward.wait_event("disconnected")
        assert lost["reason"] and "None" not in lost["reason"], lost
        forward.stop()
        assert "(None)" not in expose.log.read_text() + forward.log.read_text()
    finally:
        d.stop_all()
        b.procs = [p for p in b.procs if p.popen.poll() is None]


def test_relay_only_does_not_say_punching(lab, tmp_path):
    b, a = lab["b"], lab["a"]
    result = b.run("pipe", "--to", a.peer_id, "--port", str(lab["services"]["echo"]), "--relay-only", input="relayed\n")
    assert result.returncode == 0 and result.stdout == "relayed\n", result.stderr
    assert "punching" not in result.stderr, result.stderr
    assert "relaying only (--relay-only)" in result.stderr and "path relay" in result.stderr, result.stderr
