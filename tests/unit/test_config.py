import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer.config import BeaconSpec, ConfigError, load_beacons_file, parse_beacons, split_host_port

HASH = "A" * 42 + "A"


def test_parse_valid_entries():
    specs = parse_beacons(
        [{"hostname": "b1.example.org:4264", "cert_hash": HASH}, {"hostname": "[2001:db8::1]:443", "cert_hash": HASH}]
    )
    assert specs[0] == BeaconSpec("b1.example.org", 4264, HASH)
    assert specs[1].host == "2001:db8::1" and specs[1].port == 443
    assert specs[1].hostname == "[2001:db8::1]:443"


@pytest.mark.parametrize(
    "entry,fragment",
    [
        ({"hostname": "b1.example.org", "cert_hash": HASH}, "missing port"),
        ({"hostname": "b1:0", "cert_hash": HASH}, "invalid port"),
        ({"hostname": "b1:70000", "cert_hash": HASH}, "invalid port"),
        ({"hostname": "2001:db8::1:4264", "cert_hash": HASH}, "brackets"),
        ({"hostname": "b1:4264", "cert_hash": "short"}, "43 base64url"),
        ({"hostname": "b1:4264", "cert_hash": "A" * 42 + "B"}, "canonical"),
        ({"hostname": "b1:4264"}, "cert_hash"),
        ({"hostname": "b1:4264", "cert_hash": HASH, "extra": 1}, "unknown key"),
        ("b1:4264", "expected a table"),
    ],
)
def test_bad_entries_name_the_entry(entry, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_beacons([{"hostname": "ok:1", "cert_hash": HASH}, entry])
    assert "beacons[1]" in str(info.value)


def test_duplicate_is_refused():
    with pytest.raises(ConfigError, match="twice"):
        parse_beacons([{"hostname": "a:1", "cert_hash": HASH}] * 2)


def test_toml_file(tmp_path):
    path = tmp_path / "peer.toml"
    path.write_text(f'beacons = [{{hostname = "b1.example.org:4264", cert_hash = "{HASH}"}}]\n')
    assert load_beacons_file(path) == [BeaconSpec("b1.example.org", 4264, HASH)]
    path.write_text("beacons = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_beacons_file(path)
    path.write_text('beacons = [{hostname = "nope", cert_hash = "x"}]')
    with pytest.raises(ConfigError, match=r"peer.toml: beacons\[0\]"):
        load_beacons_file(path)


@given(st.text(max_size=60))
def test_split_host_port_never_crashes(text):
    try:
        host, port = split_host_port(text)
    except ConfigError:
        return
    assert 0 < port < 65536 and host
