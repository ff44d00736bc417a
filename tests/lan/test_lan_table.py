"""The sans-I/O service table of LAN discovery: what is reported, and that state stays bounded."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discretpeer.lan import LanDiscovery, LanSighting, ServiceTable
from discretpeer.proto.lan_txt import LanTxt, encode_txt
from discretpeer.proto.wire import Address

OWN = b"\x01" * 16
PEER = b"\x02" * 16
T1 = b"\x11" * 32
T2 = b"\x22" * 32
T3 = b"\x33" * 32


def txt(instance: bytes = PEER, *tokens: bytes) -> bytes:
    return encode_txt(LanTxt(instance, tokens))


def test_matching_service_is_reported_once() -> None:
    table = ServiceTable(OWN)
    table.set_wanted([T1])
    found = table.update("Peer._discretpeer._udp.local.", txt(PEER, T1, T2), 4000, ["10.0.0.2"])
    assert found == [LanSighting(T1, PEER, (Address("10.0.0.2", 4000),))]
    assert table.update("peer._discretpeer._udp.local.", txt(PEER, T1, T2), 4000, ["10.0.0.2"]) == []
    assert len(table) == 1 and "PEER._discretpeer._udp.local." in table


def test_own_service_and_non_matching_services_are_not_reported() -> None:
    table = ServiceTable(OWN)
    table.set_wanted([T1])
    assert table.update("me", txt(OWN, T1), 4000, ["10.0.0.1"]) == []
    assert table.stats["own"] == 1 and len(table) == 0
    assert table.update("other", txt(PEER, T2), 4000, ["10.0.0.3"]) == []
    assert len(table) == 1


def test_changes_are_reported_again() -> None:
    table = ServiceTable(OWN)
    table.set_wanted([T1, T2])
    assert len(table.update("p", txt(PEER, T1), 4000, ["10.0.0.2"])) == 1
    # new address
    [again] = table.update("p", txt(PEER, T1), 4000, ["10.0.0.2", "10.0.0.9"])
    assert again.addresses == (Address("10.0.0.2", 4000), Address("10.0.0.9", 4000))
    # new port
    assert table.update("p", txt(PEER, T1), 4001, ["10.0.0.2", "10.0.0.9"])[0].addresses[0].port == 4001
    # a newly matching token: only that one is reported
    [new] = table.update("p", txt(PEER, T1, T2), 4001, ["10.0.0.2", "10.0.0.9"])
    assert new.token == T2
    # token withdrawn then back
    assert table.update("p", txt(PEER, T2), 4001, ["10.0.0.2", "10.0.0.9"]) == []
    assert [s.token for s in table.update("p", txt(PEER, T2, T1), 4001, ["10.0.0.2", "10.0.0.9"])] == [T1]
    # another instance under the same name (a restarted peer) is a new sighting
    other = b"\x03" * 16
    assert {s.instance for s in table.update("p", txt(other, T2, T1), 4001, ["10.0.0.2", "10.0.0.9"])} == {other}


def test_set_wanted_reports_known_services() -> None:
    table = ServiceTable(OWN)
    assert table.update("p", txt(PEER, T3), 4000, ["10.0.0.2"]) == []
    assert [s.token for s in table.set_wanted([T1, T3])] == [T3]
    assert table.set_wanted([T1, T3]) == []
    assert table.set_wanted([T1]) == []
    assert [s.token for s in table.set_wanted([T3])] == [T3]


def test_invalid_records_remove_the_service() -> None:
    table = ServiceTable(OWN)
    table.set_wanted([T1])
    table.update("p", txt(PEER, T1), 4000, ["10.0.0.2"])
    assert table.update("p", b"\x03v=2", 4000, ["10.0.0.2"]) == []
    assert len(table) == 0 and table.stats["invalid_txt"] == 1
    assert table.update("q", txt(PEER, T1), 0, ["10.0.0.2"]) == []
    assert table.update("q", txt(PEER, T1), None, ["10.0.0.2"]) == []
    assert len(table) == 0


def test_address_filtering_order_and_cap() -> None:
    table = ServiceTable(OWN, max_addresses=4)
    table.set_wanted([T1])
    hosts = [
        "fe80::1%3",
        "fe80::2",
        "2001:db8::5",
        "127.0.0.1",
        "::1",
        "224.0.0.251",
        "0.0.0.0",
        "::ffff:10.0.0.7",
        "not an ip",
        "10.0.0.2",
        "10.0.0.2",
        "192.168.1.4",
    ]
    [found] = table.update("p", txt(PEER, T1), 4000, hosts)
    assert [a.host for a in found.addresses] == ["10.0.0.2", "192.168.1.4", "2001:db8::5", "fe80::1%3"]
    small = ServiceTable(OWN, max_addresses=2)
    small.set_wanted([T1])
    [capped] = small.update("p", txt(PEER, T1), 4000, [f"10.1.0.{n}" for n in range(200)])
    assert [a.host for a in capped.addresses] == ["10.1.0.0", "10.1.0.1"]  # first 64 looked at, sorted


def test_unscoped_link_local_gets_the_only_interface() -> None:
    table = ServiceTable(OWN, link_local_scope=7)
    table.set_wanted([T1])
    [found] = table.update("p", txt(PEER, T1), 4000, ["fe80::2", "fe80::3%2"])
    assert [a.host for a in found.addresses] == ["fe80::2%7", "fe80::3%2"]


@pytest.mark.parametrize(("version", "expected"), [("v4", ["10.0.0.2"]), ("v6", ["2001:db8::5"])])
def test_ip_version_filter(version: str, expected: list[str]) -> None:
    table = ServiceTable(OWN, ip_version=version)  # type: ignore[arg-type]  # deliberately the wrong type: the error is what is tested
    table.set_wanted([T1])
    [found] = table.update("p", txt(PEER, T1), 4000, ["10.0.0.2", "2001:db8::5"])
    assert [a.host for a in found.addresses] == expected


def test_no_usable_address_means_no_sighting_yet() -> None:
    table = ServiceTable(OWN)
    table.set_wanted([T1])
    assert table.update("p", txt(PEER, T1), 4000, ["127.0.0.1"]) == []
    assert len(table.update("p", txt(PEER, T1), 4000, ["10.0.0.2"])) == 1


def test_full_table_keeps_matching_services() -> None:
    table = ServiceTable(OWN, max_services=3)
    table.set_wanted([T1])
    for n in range(3):
        table.update(f"junk{n}", txt(os.urandom(16), T2), 4000, ["10.0.0.9"])
    assert table.update("junk3", txt(os.urandom(16), T2), 4000, ["10.0.0.9"]) == []
    assert table.stats["full"] == 1
    # a matching service evicts the oldest non-matching one
    assert len(table.update("good0", txt(os.urandom(16), T1), 4000, ["10.0.0.2"])) == 1
    assert "junk0" not in table and table.stats["evicted"] == 1
    for n in (1, 2):
        table.update(f"good{n}", txt(os.urandom(16), T1), 4000, ["10.0.0.2"])
    assert len(table) == 3
    # all matching: a further one is dropped, nothing is evicted
    assert table.update("good3", txt(os.urandom(16), T1), 4000, ["10.0.0.2"]) == []
    assert len(table) == 3 and table.stats["full"] == 2
    table.remove("GOOD0")
    assert len(table.update("good3", txt(os.urandom(16), T1), 4000, ["10.0.0.2"])) == 1


TOKENS = [bytes([n]) * 32 for n in range(1, 6)]
INSTANCES = [bytes([n]) * 16 for n in range(1, 5)]  # INSTANCES[0] is ours

operation = st.one_of(
    st.tuples(
        st.just("update"),
        st.integers(0, 40),
        st.one_of(
            st.tuples(st.sampled_from(INSTANCES), st.lists(st.sampled_from(TOKENS), max_size=4, unique=True)).map(
                lambda it: encode_txt(LanTxt(it[0], tuple(it[1])))
            ),
            st.binary(max_size=64),
        ),
        st.integers(0, 70000),
        st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fe80::1%2", "127.0.0.1", "2001:db8::1", "x"]), max_size=12),
    ),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("wanted"), st.lists(st.sampled_from(TOKENS), max_size=3)),
)


@given(st.lists(operation, max_size=120), st.integers(1, 8), st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_any_sequence_stays_bounded_and_consistent(ops: list, max_services: int, max_addresses: int) -> None:
    table = ServiceTable(INSTANCES[0], max_services=max_services, max_addresses=max_addresses)
    for op in ops:
        if op[0] == "update":
            _, n, data, port, hosts = op
            found = table.update(f"s{n}", data, port, hosts)
            # the same records again never report anything
            assert table.update(f"s{n}", data, port, hosts) == []
        elif op[0] == "remove":
            table.remove(f"s{op[1]}")
            found = []
        else:
            found = table.set_wanted(op[1])
        assert len(table) <= max_services
        for sighting in found:
            assert sighting.token in table.wanted
            assert sighting.instance != INSTANCES[0]
            assert 1 <= len(sighting.addresses) <= max_addresses
            assert all(not a.ip.is_loopback for a in sighting.addresses)


def test_discovery_validates_its_arguments() -> None:
    def nothing(_: LanSighting) -> None:
        pass

    with pytest.raises(ValueError):
        LanDiscovery(port=0, instance=OWN, on_found=nothing)
    with pytest.raises(ValueError):
        LanDiscovery(port=4000, instance=b"short", on_found=nothing)
    with pytest.raises(ValueError):
        LanDiscovery(port=4000, instance=OWN, on_found=nothing, ip_version="v5")  # type: ignore[arg-type]  # deliberately the wrong type: the error is what is tested
    with pytest.raises(ValueError):
        LanDiscovery(port=4000, instance=OWN, on_found=nothing, interfaces=[])
    lan = LanDiscovery(port=4000, instance=OWN, on_found=nothing)
    assert lan.service_name.endswith("._discretpeer._udp.local.")
    assert OWN.hex() not in lan.service_name


async def test_set_tokens_before_start_truncates_published_tokens(caplog: pytest.LogCaptureFixture) -> None:
    lan = LanDiscovery(port=4000, instance=OWN, on_found=lambda s: None)
    tokens = [bytes([n]) * 32 for n in range(20)]
    await lan.set_tokens(tokens + tokens[:3])
    assert lan.tokens == tuple(tokens)
    assert lan.published_tokens == tuple(tokens[:16])
    with pytest.raises(ValueError):
        await lan.set_tokens([b"short"])
    await lan.close()  # closing a never-started discovery is fine


def test_a_failing_callback_is_contained() -> None:
    def explode(_: LanSighting) -> None:
        raise RuntimeError("boom")

    lan = LanDiscovery(port=4000, instance=OWN, on_found=explode)
    lan._deliver([LanSighting(T1, PEER, (Address("10.0.0.2", 4000),))] * 2)
    assert lan.stats["callback_errors"] == 2


async def test_unknown_interface_is_refused_before_any_socket() -> None:
    lan = LanDiscovery(port=4000, instance=OWN, on_found=lambda s: None, interfaces=["no-such-if0"])
    with pytest.raises(ValueError, match="no-such-if0"):
        await lan.start()
    assert not lan.running
