"""`discretpeer ping` against a running expose, and `status` naming peers from [peers]."""

from __future__ import annotations

import json

from tests.cli.conftest import Node
from tests.cli.test_failures import error_lines


def name_peers(node: Node, **peers: str) -> None:
    config = node.home / ".config" / "discretpeer" / "config.toml"
    config.write_text(config.read_text() + "[peers]\n" + "".join(f'{k} = "{v}"\n' for k, v in peers.items()))


def test_ping_shows_round_trips_and_the_path(lab):
    a, b = lab["a"], lab["b"]
    result = b.run("ping", a.peer_id, "-c", "3", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    for line in lines[:3]:
        assert line.startswith(f"pong from {a.peer_id[:12]}... via direct 127.0.0.1:") and line.endswith(" ms"), line
    assert lines[3].startswith(f"3 pong(s) of 3 from {a.peer_id[:12]}..., round trip min/avg/max "), lines[3]
    relayed = b.run("ping", a.peer_id, "-c", "2", "--relay-only", "--json")
    assert relayed.returncode == 0, relayed.stderr
    events = [json.loads(line) for line in relayed.stdout.splitlines()]
    pongs = [e for e in events if e["event"] == "pong"]
    assert [p["seq"] for p in pongs] == [1, 2] and {p["path"] for p in pongs} == {"relay"}
    assert all(0 < p["rtt_ms"] < 1000 for p in pongs)
    assert events[-1]["event"] == "summary" and events[-1]["received"] == 2


def test_ping_failures_are_one_line_and_exit_1(lab):
    a, c = lab["a"], lab["c"]
    refused = c.run("ping", a.peer_id, "-c", "1", "--timeout", "3")  # C is not in A's allow list
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(error_lines(refused.stderr)) == 1
    usage = c.run("ping", "nobody")
    assert usage.returncode == 2 and "[peers]" in error_lines(usage.stderr)[0]
    zero = c.run("ping", a.peer_id, "-c", "0")
    assert zero.returncode == 2 and "invalid count" in error_lines(zero.stderr)[0]


def test_ping_and_status_use_names_from_peers(lab, tmp_path):
    beacon, services = lab["beacon"], lab["services"]
    device = Node(tmp_path / "device", [beacon])
    laptop = Node(tmp_path / "laptop", [beacon])
    name_peers(device, laptop=laptop.peer_id)
    name_peers(laptop, pi=device.peer_id)
    config = device.home / ".config" / "discretpeer" / "config.toml"
    config.write_text(config.read_text().replace("[peers]", 'allow = ["laptop"]\n[peers]'))
    try:
        expose = device.start(
            "expose", str(services["echo"]), "--json", "--control", str(tmp_path / "d.sock"), name="expose-names"
        )
        expose.wait_event("exposing")
        pinged = laptop.run("ping", "pi", "-c", "1")
        assert pinged.returncode == 0 and pinged.stdout.startswith(f"pong from pi ({device.peer_id[:12]}...) via ")
        forward = laptop.start(
            "forward",
            "0",
            "--to",
            "pi",
            "--json",
            "--control",
            str(tmp_path / "f.sock"),
            "--max-datagram-size",
            "1280",
            "--tuning",
            "path=1gbit@80ms",
            name="forward-names",
        )
        forward.wait_event("connected")
        expose.wait_event("peer_connected")
        shown = device.run("status", "--control", str(tmp_path / "d.sock"))
        assert shown.returncode == 0, shown.stderr
        assert "allowed: 1 peer(s) (laptop)" in shown.stdout, shown.stdout
        row = next(line for line in shown.stdout.splitlines() if line.strip().startswith("laptop "))
        assert " direct " in row or " lan " in row, row
        as_json = json.loads(device.run("status", "--json", "--control", str(tmp_path / "d.sock")).stdout)
        assert [c["name"] for c in as_json["connections"]] == ["laptop"]
        forwarding = laptop.run("status", "--control", str(tmp_path / "f.sock"))
        assert " to pi port " in forwarding.stdout, forwarding.stdout
        # --max-datagram-size caps what the forwarding side sends (loopback allows 16,000)
        sizes = json.loads(laptop.run("status", "--json", "--control", str(tmp_path / "f.sock")).stdout)
        assert sizes["connection"]["datagram_size"] == 1280, sizes  # (1,350 before any probe, without it)
        # --tuning path= sizes the windows of the forwarding side's connection (2 x 125 MB/s x 80 ms)
        assert sizes["connection"]["receive_window"] == 20 * 1024 * 1024, sizes
        assert as_json["connections"][0]["receive_window"] == 8 * 1024 * 1024, as_json  # the device: defaults
    finally:
        device.stop_all()
        laptop.stop_all()
