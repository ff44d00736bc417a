"""Pairing by short code, end to end: two machines (own HOME, own identity), a real beacon, real
processes. Then the pairing is used: the inviter exposes to the name it saved, the other pipes
to the name it saved. A wrong code and an expired one write nothing."""

from __future__ import annotations

import tomllib

import pytest

from discretpeer.cli.pairing import Code, PairingError, parse_code
from tests.cli.conftest import Node
from tests.cli.test_failures import error_lines


def config_of(node: Node) -> dict:
    return tomllib.loads((node.home / ".config" / "discretpeer" / "config.toml").read_text())


def machines(tmp_path, beacon) -> tuple[Node, Node]:
    return Node(tmp_path / "pi", [beacon]), Node(tmp_path / "laptop", [beacon])


def test_invite_accept_then_ssh_like_pipe_by_name(tmp_path, beacon, services):
    pi, laptop = machines(tmp_path, beacon)
    before = config_of(pi)
    invite = pi.start("invite", "--name", "laptop", "--json", name="invite")
    code = invite.wait_event("invite")["code"]
    parse_code(code)  # NUMBER-WORD-WORD
    accepted = laptop.run("accept", code, "--name", "pi")
    assert accepted.returncode == 0, accepted.stderr
    assert "paired with pi (" in accepted.stderr and pi.peer_id in accepted.stderr
    paired = invite.wait_event("paired")
    assert paired["peer"] == laptop.peer_id and paired["name"] == "laptop" and paired["changed"]
    assert invite.popen.wait(10) == 0
    pi_config, laptop_config = config_of(pi), config_of(laptop)
    assert pi_config["peers"] == {"laptop": laptop.peer_id} and pi_config["allow"] == ["laptop"]
    assert laptop_config["peers"] == {"pi": pi.peer_id} and laptop_config["allow"] == ["pi"]
    for key, value in before.items():  # everything else kept
        assert pi_config[key] == value
    # the names work: the pi exposes to "laptop" (its config), the laptop pipes to "pi"
    expose = pi.start("expose", str(services["echo"]), "--json", "--control", str(tmp_path / "pi.sock"), name="expose")
    try:
        assert expose.wait_event("exposing")["allowed"] == [laptop.peer_id]
        echoed = laptop.run("pipe", "--to", "pi", input="paired\n")
        assert echoed.returncode == 0 and echoed.stdout == "paired\n", echoed.stderr
    finally:
        pi.stop_all()
    # pairing again is harmless: the same names, nothing duplicated
    again = pi.start("invite", "--json", name="invite-again")
    code = again.wait_event("invite")["code"]
    assert laptop.run("accept", code).returncode == 0
    assert again.wait_event("paired")["changed"] is False
    assert config_of(pi)["allow"] == ["laptop"] and config_of(laptop)["peers"] == {"pi": pi.peer_id}
    pi.stop_all()


def test_wrong_code_fails_on_both_sides_and_writes_nothing(tmp_path, beacon):
    pi, laptop = machines(tmp_path, beacon)
    before = (config_of(pi), config_of(laptop))
    invite = pi.start("invite", "--json", name="invite-wrong")
    code = parse_code(invite.wait_event("invite")["code"])
    other = "apple" if code.words[1] != "apple" else "river"
    wrong = str(Code(code.number, (code.words[0], other)))
    guess = laptop.run("accept", wrong)
    assert guess.returncode == 1
    [line] = error_lines(guess.stderr)
    assert "wrong code" in line and "nothing was written" in line
    assert invite.popen.wait(10) == 1
    assert "tried a wrong code" in invite.wait_event("wrong_code")["message"]
    # one guess per code: the invitation is gone, even the right code no longer finds it
    late = laptop.run("accept", str(code), "--timeout", "2")
    assert late.returncode == 1 and "nobody is waiting on invitation" in error_lines(late.stderr)[0]
    assert (config_of(pi), config_of(laptop)) == before
    pi.stop_all()


def test_expired_code_and_bad_input(tmp_path, beacon):
    pi, laptop = machines(tmp_path, beacon)
    before = config_of(laptop)
    invite = pi.start("invite", "--valid", "1", "--json", name="invite-expiring")
    code = invite.wait_event("invite")["code"]
    assert invite.popen.wait(15) == 1
    assert "expired" in invite.wait_event("expired")["message"]
    late = laptop.run("accept", code, "--timeout", "2")
    assert late.returncode == 1 and "nobody is waiting" in error_lines(late.stderr)[0]
    assert config_of(laptop) == before
    for bad, text in (
        ("7-apple", "expected NUMBER-WORD-WORD"),
        ("0-apple-river", "1..999"),
        ("7-apple-banana", "'banana' is not one of the code words"),
    ):
        result = laptop.run("accept", bad)
        assert result.returncode == 2 and text in error_lines(result.stderr)[0], result.stderr
    named = laptop.run("accept", "7-apple-river", "--name", "bad name")
    assert named.returncode == 2 and "invalid name" in error_lines(named.stderr)[0]
    assert config_of(laptop) == before
    for args, text in (
        (("invite", "--browser"), "--url wss://BEACON/ws, or web_url"),
        (("invite", "--url", "wss://beacon.example.org/ws"), "--url is for --browser"),
        (("invite", "--browser", "--url", "https://beacon.example.org/"), "must be ws:// or wss://"),
    ):
        result = laptop.run(*args)
        assert result.returncode == 2 and text in error_lines(result.stderr)[0], result.stderr
    assert config_of(laptop) == before


@pytest.mark.parametrize("text", ["7 Apple  River", " 7-apple-river ", "7-APPLE-river"])
def test_codes_are_read_leniently(text):
    assert str(parse_code(text)) == "7-apple-river"
    with pytest.raises(PairingError):
        parse_code(text.replace("7", "x"))
