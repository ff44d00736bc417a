"""Reading a ClientHello's server name and ALPN (beacon/client_hello.py), and the web settings that go
with the shared TLS/TCP listener: real hellos parse, junk and odd ones give None, never an exception."""

from __future__ import annotations

import contextlib
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon.client_hello import ClientHello, first_record_size, name_matches, normalize_name, parse_client_hello
from beacon.config import ConfigError, loopback_config
from discretpeer.proto.stream_frames import BEACON_TCP_ALPN


def hello(name: str | None, alpn: list[str] | None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


REAL = hello("Beacon.Example.org", ["h2", "http/1.1"])


def test_real_client_hellos() -> None:
    assert first_record_size(REAL) == len(REAL)
    assert parse_client_hello(REAL) == ClientHello("beacon.example.org", ("h2", "http/1.1"))
    assert parse_client_hello(REAL + b"\x17\x03\x03") == parse_client_hello(REAL)  # bytes after the record
    assert parse_client_hello(hello(None, [BEACON_TCP_ALPN])) == ClientHello(None, (BEACON_TCP_ALPN,))
    assert parse_client_hello(hello(None, None)) == ClientHello(None, ())


def test_incomplete_fragmented_or_odd_hellos_give_none() -> None:
    for cut in (0, 4, 5, 50, len(REAL) - 1):
        assert parse_client_hello(REAL[:cut]) is None
    body = REAL[5:]
    split = REAL[:3] + struct.pack("!H", 40) + body[:40] + REAL[:3] + struct.pack("!H", len(body) - 40) + body[40:]
    assert parse_client_hello(split) is None  # the handshake message goes on in the next record
    assert parse_client_hello(b"\x17" + REAL[1:]) is None  # not a handshake record
    assert parse_client_hello(REAL[:3] + b"\x40\x01" + REAL[5:]) is None  # longer than a record may be
    assert parse_client_hello(REAL[:5] + b"\x02" + REAL[6:]) is None  # a ServerHello


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_junk_never_crashes(data: bytes) -> None:
    for candidate in (data, b"\x16\x03\x01" + struct.pack("!H", len(data)) + data):
        result = parse_client_hello(candidate)
        assert result is None or isinstance(result, ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.integers(5, len(REAL) - 1), st.integers(0, 255))
def test_one_flipped_byte_never_crashes(position: int, value: int) -> None:
    mutated = bytearray(REAL)
    mutated[position] = value
    result = parse_client_hello(bytes(mutated))
    if result is not None and result.server_name is not None:
        assert normalize_name(result.server_name) == result.server_name


def test_names_and_wildcards() -> None:
    assert normalize_name(b"Beacon.Example.ORG.") == "beacon.example.org"
    assert normalize_name(b"") is None and normalize_name(b"a\x00b") is None and normalize_name("é.org") is None
    patterns = ("beacon.example.org", "*.shell.example.org")
    assert name_matches("beacon.example.org", patterns)
    assert name_matches("pi.shell.example.org", patterns)
    assert not name_matches("shell.example.org", patterns)
    assert not name_matches("a.pi.shell.example.org", patterns)
    assert not name_matches("example.org", patterns)
    assert not name_matches("evil-beacon.example.org", patterns)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"web_enabled": True}, "set web_certificate"),
        ({"web_enabled": True, "web_certificate": "c.pem", "tcp_enabled": False}, "needs web_port"),
        ({"web_enabled": True, "web_port": 8443, "workers": 2, "store": "redis://x/0"}, "workers = 1"),
    ],
)
def test_web_settings_that_cannot_serve_the_page_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        loopback_config(**changes)
    loopback_config(web_enabled=True, web_certificate="c.pem")  # HTTPS on the TLS/TCP listener only
    loopback_config(web_enabled=True, web_port=8443)  # plain HTTP for a reverse proxy
