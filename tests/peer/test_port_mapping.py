"""A Peer with a (scripted, loopback) PCP gateway: the mapped address is announced as its first
candidate and reaches the other peer in the introduction; the mapping is deleted on close; a
silent gateway does not delay connecting."""

from __future__ import annotations

import time

from discretpeer import Identity, Peer
from discretpeer.portmap import pcp
from tests.conftest import beacon_entry
from tests.support.peers import connect_both
from tests.unit.test_portmap_client import gateway


def grant(data: bytes) -> list[bytes]:
    req = pcp.MapRequest.decode(data) if data[0] == pcp.VERSION else None
    if req is None:
        return []
    lifetime = 600 if req.lifetime else 0
    return [pcp.MapResponse(0, lifetime, 7, req.nonce, req.internal_port, req.internal_port, MAPPED_IP).encode()]


MAPPED_IP = "127.0.0.9"  # loopback: probes to the "public" address stay on this machine


async def test_mapped_address_is_announced_and_deleted_on_close(beacon):
    gw, gw_port = await gateway(grant)
    entry = [beacon_entry(beacon)]
    pa = Peer(Identity.generate(), entry, host="127.0.0.1", port_mapping_gateway=f"127.0.0.1:{gw_port}")
    pb = Peer(Identity.generate(), entry, host="127.0.0.1")
    async with pa, pb:
        assert pa.port_mapper is not None and pb.port_mapper is None  # loopback: no gateway asked
        mapping = await pa.port_mapper.wait_first_attempt(3)
        assert mapping is not None and mapping.external == (MAPPED_IP, pa.port)
        ca, cb = await connect_both(pa, pb, "mapped", 10)
        pair = next(iter(pb._pairs.values()))
        # B heard of A's mapped address from the beacon (the first candidate A announced)
        assert (MAPPED_IP, pa.port) in pair.session.candidates
        before = len(gw.requests)
    deletes = [pcp.MapRequest.decode(d) for d in gw.requests[before:] if d[0] == pcp.VERSION]
    assert any(d.lifetime == 0 and d.internal_port == mapping.internal_port for d in deletes)


async def test_a_silent_gateway_does_not_delay_connecting(beacon):
    gw, gw_port = await gateway(lambda data: [])
    entry = [beacon_entry(beacon)]
    pa = Peer(Identity.generate(), entry, host="127.0.0.1", port_mapping_gateway=f"127.0.0.1:{gw_port}")
    pb = Peer(Identity.generate(), entry, host="127.0.0.1")
    async with pa, pb:
        started = time.monotonic()
        ca, cb = await connect_both(pa, pb, "silent", 10)
        assert time.monotonic() - started < 1.0  # the gateway's 2 s of silence is not waited for
        assert ca.path == cb.path == "direct"
        assert pa.port_mapper is not None and pa.port_mapper.mapping is None
        assert len(gw.requests) <= 9  # three tries of PCP + NAT-PMP (address, map): no storm
