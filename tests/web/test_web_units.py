"""Sans-I/O parts of the browser shell: signalling messages and rooms, pairing, channel binding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon.web_signal import MAX_MESSAGE_BYTES, Rooms, SignalError, parse_client_message, turn_credentials
from discretpeer.identity import Identity
from discretpeer.web.binding import BindingError, binding_message, only_sha256, sdp_fingerprint, verify_binding
from discretpeer.web.pairing import ALPHABET, DevicePairing, PairingError, generate_code, parse_code

TOKEN = "ab" * 32
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_parse_never_crashes_on_junk(raw: str | bytes) -> None:
    try:
        message = parse_client_message(raw, max_tokens=8)
    except SignalError as exc:
        assert str(exc)
    else:
        assert message.kind in ("listen", "send", "turn")


@given(st.dictionaries(st.sampled_from(["v", "t", "tokens", "token", "data"]), json_values, max_size=5))
def test_parse_structured_junk(obj: dict) -> None:
    try:
        message = parse_client_message(json.dumps(obj), max_tokens=8)
    except SignalError:
        return
    assert obj["v"] == 1 and obj["t"] in ("listen", "send", "turn")
    for token in message.tokens:
        assert len(token) == 64 and bytes.fromhex(token)


@given(st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=8), json_values)
def test_valid_messages_round_trip(tokens: list[str], data: object) -> None:
    listen = parse_client_message(json.dumps({"v": 1, "t": "listen", "tokens": tokens}), max_tokens=8)
    assert listen.tokens == tuple(dict.fromkeys(tokens))
    send = parse_client_message(json.dumps({"v": 1, "t": "send", "token": TOKEN, "data": {"x": data}}), max_tokens=8)
    assert send.data == {"x": data} and send.tokens == (TOKEN,)


def test_parse_refusals_name_the_problem() -> None:
    cases = {
        "x" * (MAX_MESSAGE_BYTES + 1): "larger than",
        "[1]": "JSON object",
        '{"v":2,"t":"listen","tokens":[]}': "unsupported version",
        '{"v":1,"t":"nope"}': "unknown message type",
        json.dumps({"v": 1, "t": "listen", "tokens": [TOKEN] * 9}): "too many tokens",
        json.dumps({"v": 1, "t": "send", "token": TOKEN.upper(), "data": {}}): "64 lowercase hex",
        json.dumps({"v": 1, "t": "send", "token": TOKEN, "data": "sdp"}): "data object",
        "[" * 100000: "larger than",
    }
    for raw, reason in cases.items():
        with pytest.raises(SignalError, match=reason):
            parse_client_message(raw, max_tokens=8)
    with pytest.raises(SignalError, match="binary"):
        parse_client_message(b"{}", max_tokens=8)
    with pytest.raises(SignalError, match="valid JSON"):
        parse_client_message("[" * 5000, max_tokens=8)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 5), st.lists(st.integers(0, 6), max_size=6)), max_size=40))
def test_rooms_stay_consistent_and_bounded(ops: list[tuple[int, list[int]]]) -> None:
    rooms = Rooms(max_tokens_per_client=4, max_members_per_token=3)
    tokens = [f"{i:064x}" for i in range(7)]
    for client, wanted in ops:
        if not wanted:
            rooms.leave(client)
            continue
        try:
            rooms.listen(client, tuple(dict.fromkeys(tokens[i] for i in wanted)))
        except SignalError:
            assert len(set(wanted)) > 4
        for token, members in rooms.members.items():
            assert 0 < len(members) <= 3
            assert all(token in rooms.tokens_of[m] for m in members)
        for member, held in rooms.tokens_of.items():
            assert 0 < len(held) <= 4
            assert all(member in rooms.members[t] for t in held)


def test_rooms_send_only_on_own_token() -> None:
    rooms = Rooms()
    rooms.listen("a", (TOKEN,))
    rooms.listen("b", (TOKEN,))
    assert rooms.others("a", TOKEN) == ["b"]
    with pytest.raises(SignalError, match="do not listen"):
        rooms.others("c", TOKEN)


def test_turn_credentials_follow_the_rest_api_convention() -> None:
    import base64
    import hashlib
    import hmac

    user, credential = turn_credentials(b"s3cret", 600, 1000.0)
    assert user == "1600:web"
    assert base64.b64decode(credential) == hmac.new(b"s3cret", b"1600:web", hashlib.sha1).digest()


# --- pairing -----------------------------------------------------------------------------------


@given(st.text(max_size=30))
def test_parse_code_never_crashes(text: str) -> None:
    try:
        room, password = parse_code(text)
    except PairingError:
        return
    assert len(room) == 4 and len(password) == 6 and set(room + password) <= set(ALPHABET)


def test_generated_codes_parse_forgivingly() -> None:
    code = generate_code()
    assert parse_code(code) == parse_code(code.lower().replace("-", " "))
    assert parse_code("k7q2-9xmt4h") == ("K7Q2", "9XMT4H")
    assert parse_code("O1L2-IIIIII") == ("0112", "111111")


def _browser_side(password: str, device_message: dict | None = None):
    from spake2 import SPAKE2_A

    spake = SPAKE2_A(password.encode(), idA=b"discretpeer/web browser", idB=b"discretpeer/web device")
    return spake, spake.start()


def test_pairing_right_code() -> None:
    import base64
    import hashlib
    import hmac

    device_key = Identity.generate().public_key
    code = generate_code()
    pairing = DevicePairing(code, device_key, "box")
    spake, first = _browser_side(parse_code(code)[1])
    reply, done = pairing.receive({"k": "pake", "m": base64.b64encode(first).decode()})
    assert done is None and reply is not None
    key = spake.finish(base64.b64decode(reply["m"]))
    expected = hmac.new(key, b"device\0" + device_key, hashlib.sha256).digest()
    assert hmac.compare_digest(base64.b64decode(reply["mac"]), expected)
    browser_key = b"\x07" * 32
    mac = hmac.new(key, b"browser\0" + device_key + b"\0" + browser_key, hashlib.sha256).digest()
    reply, done = pairing.receive(
        {
            "k": "hello",
            "pub": base64.b64encode(browser_key).decode(),
            "name": "phone",
            "mac": base64.b64encode(mac).decode(),
        }
    )
    assert reply["k"] == "welcome" and done is not None and done.public_key == browser_key
    with pytest.raises(PairingError, match="already used"):
        pairing.receive({"k": "pake", "m": ""})


def test_pairing_wrong_code_fails_and_burns_the_code() -> None:
    import base64
    import hashlib
    import hmac

    device_key = Identity.generate().public_key
    pairing = DevicePairing("K7Q2-9XMT4H", device_key, "box")
    spake, first = _browser_side("9XMT4J")  # one symbol off
    reply, _ = pairing.receive({"k": "pake", "m": base64.b64encode(first).decode()})
    key = spake.finish(base64.b64decode(reply["m"]))
    assert base64.b64decode(reply["mac"]) != hmac.new(key, b"device\0" + device_key, hashlib.sha256).digest()
    mac = hmac.new(key, b"browser\0" + device_key + b"\0" + b"\1" * 32, hashlib.sha256).digest()
    with pytest.raises(PairingError, match="wrong pairing code"):
        pairing.receive(
            {
                "k": "hello",
                "pub": base64.b64encode(b"\1" * 32).decode(),
                "name": "x",
                "mac": base64.b64encode(mac).decode(),
            }
        )
    assert pairing.done and pairing.result is None
    with pytest.raises(PairingError, match="already used"):  # no second guess with the same code
        pairing.receive({"k": "pake", "m": base64.b64encode(first).decode()})


@given(st.dictionaries(st.sampled_from(["k", "m", "pub", "name", "mac"]), json_values, max_size=5))
def test_pairing_junk_is_refused_cleanly(data: dict) -> None:
    pairing = DevicePairing("K7Q2-9XMT4H", b"\0" * 32, "box")
    try:
        pairing.receive(data)
    except PairingError as exc:
        assert str(exc) and pairing.done


# --- channel binding -----------------------------------------------------------------------------

FP_A = ":".join(["AB"] * 32)
FP_B = ":".join(["CD"] * 32)


def test_binding_signatures_are_bound_to_both_fingerprints_and_the_role() -> None:
    me = Identity.generate()
    sig = me.sign(binding_message("browser", FP_A, FP_B))
    verify_binding(me.public_key, sig, "browser", FP_A, FP_B)
    for role, a, b in [("device", FP_A, FP_B), ("browser", FP_B, FP_A), ("browser", FP_A, FP_A)]:
        with pytest.raises(BindingError):
            verify_binding(me.public_key, sig, role, a, b)
    with pytest.raises(BindingError):
        verify_binding(Identity.generate().public_key, sig, "browser", FP_A, FP_B)


def test_sdp_fingerprint_needs_exactly_one_sha256() -> None:
    sdp = f"v=0\r\na=fingerprint:sha-256 {FP_A.lower()}\r\n"
    assert sdp_fingerprint(sdp) == FP_A
    with pytest.raises(BindingError, match="exactly one"):
        sdp_fingerprint(sdp + f"a=fingerprint:sha-512 {FP_B}\r\n")
    with pytest.raises(BindingError, match="exactly one"):
        sdp_fingerprint("v=0\r\n")
    with pytest.raises(BindingError, match="sha-256"):
        sdp_fingerprint(f"a=fingerprint:sha-1 {FP_A}\r\n")
    assert sdp_fingerprint(only_sha256(sdp + f"a=fingerprint:sha-512 {FP_B}\r\n")) == FP_A


@given(st.text(max_size=400))
def test_sdp_fingerprint_never_crashes(sdp: str) -> None:
    try:
        value = sdp_fingerprint(sdp)
    except BindingError:
        return
    assert len(value) == 95
