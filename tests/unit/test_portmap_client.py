"""The port-mapping client against a scripted gateway on loopback (real UDP sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from discretpeer.portmap import natpmp, pcp
from discretpeer.portmap.client import PortMapper

pytestmark = pytest.mark.asyncio

Answer = Callable[[bytes], list[bytes]]


class Gateway(asyncio.DatagramProtocol):
    """Answers each request with what ``answer`` returns; remembers the requests."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a BaseTransport; a datagram one here

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.requests.append(data)
        assert self.transport is not None
        for reply in self.answer(data):
            self.transport.sendto(reply, addr)


async def gateway(answer: Answer) -> tuple[Gateway, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Gateway(answer), local_addr=("127.0.0.1", 0))
    return proto, transport.get_extra_info("sockname")[1]


def pcp_ok(lifetime: int = 600, external: int | None = None, epoch: int = 1000) -> Answer:
    def answer(data: bytes) -> list[bytes]:
        if data[0] != pcp.VERSION:
            return []
        req = pcp.MapRequest.decode(data)
        port = external or req.suggested_port or req.internal_port
        return [
            pcp.MapResponse(
                0, lifetime if req.lifetime else 0, epoch, req.nonce, req.internal_port, port, "198.51.100.7"
            ).encode()
        ]

    return answer


async def test_first_pcp_answer_wins_and_bad_answers_are_ignored() -> None:
    def answer(data: bytes) -> list[bytes]:
        if data[0] != pcp.VERSION:
            return []
        req = pcp.MapRequest.decode(data)
        good = pcp.MapResponse(0, 600, 9, req.nonce, req.internal_port, 40001, "198.51.100.7")
        return [
            b"\x02garbage",  # unreadable
            pcp.MapResponse(0, 600, 9, b"x" * 12, req.internal_port, 40002, "198.51.100.7").encode(),  # other nonce
            pcp.MapResponse(0, 600, 9, req.nonce, req.internal_port + 1, 40003, "198.51.100.7").encode(),  # other port
            good.encode(),
        ]

    gw, port = await gateway(answer)
    changes = []
    mapper = PortMapper(
        40000, gateway="127.0.0.1", gateway_port=port, protocols=("pcp", "natpmp"), on_change=changes.append
    )
    mapper.start()
    mapping = await mapper.wait_first_attempt(3)
    assert mapping is not None and mapping.protocol == "pcp" and mapping.external == ("198.51.100.7", 40001)
    assert changes == [mapping]
    assert mapper.status.ignored == 3
    await mapper.close()


async def test_natpmp_only_gateway_maps_and_close_deletes() -> None:
    def answer(data: bytes) -> list[bytes]:
        if data[:2] == b"\x00\x00":
            return [natpmp.AddressResponse(0, 50, "198.51.100.9").encode()]
        if data[:2] == b"\x00\x01":
            internal, suggested, lifetime = (
                int.from_bytes(data[4:6], "big"),
                int.from_bytes(data[6:8], "big"),
                int.from_bytes(data[8:12], "big"),
            )
            return [natpmp.MapResponse(0, 50, internal, suggested or 0, lifetime).encode()]
        return [pcp.MapResponse(1, 0, 0, b"", 0, 0, "0.0.0.0").encode()[:24]]  # UNSUPP_VERSION

    gw, port = await gateway(answer)
    mapper = PortMapper(40000, gateway="127.0.0.1", gateway_port=port, protocols=("pcp", "natpmp"))
    mapper.start()
    mapping = await mapper.wait_first_attempt(3)
    assert mapping is not None and mapping.protocol == "natpmp" and mapping.external == ("198.51.100.9", 40000)
    assert mapper.status.answers["pcp"] == "UNSUPP_VERSION"
    before = len(gw.requests)
    await mapper.close()
    deletes = gw.requests[before:]
    assert natpmp.map_request(40000, 0, 0) in deletes  # lifetime 0: delete
    assert any(d[0] == pcp.VERSION and pcp.MapRequest.decode(d).lifetime == 0 for d in deletes)
    assert mapper.mapping is None


async def test_renewed_before_the_lifetime_ends() -> None:
    gw, port = await gateway(pcp_ok(lifetime=1))
    mapper = PortMapper(40000, gateway="127.0.0.1", gateway_port=port, protocols=("pcp",), min_renew=0.1)
    mapper.start()
    assert await mapper.wait_first_attempt(3) is not None
    first_count = len(gw.requests)
    await asyncio.sleep(0.9)  # half the 1 s lifetime is when it renews
    renewals = [pcp.MapRequest.decode(d) for d in gw.requests[first_count:]]
    assert renewals and all(r.lifetime > 0 and r.suggested_port == 40000 for r in renewals)
    await mapper.close()


async def test_silent_gateway_gives_up_within_the_bounded_wait() -> None:
    gw, port = await gateway(lambda data: [])
    mapper = PortMapper(40000, gateway="127.0.0.1", gateway_port=port, protocols=("pcp", "natpmp"), answer_wait=1.0)
    started = time.monotonic()
    mapper.start()
    assert await mapper.wait_first_attempt(3) is None
    assert time.monotonic() - started < 1.5
    # a few retransmissions (0, 0.25, 0.75 s), no storm: 3 sends of PCP + NAT-PMP (address and map)
    assert len(gw.requests) == 9
    await mapper.close()


async def test_refusal_is_reported() -> None:
    def answer(data: bytes) -> list[bytes]:
        req = pcp.MapRequest.decode(data)
        return [pcp.MapResponse(2, 0, 5, req.nonce, req.internal_port, 0, "0.0.0.0").encode()]

    gw, port = await gateway(answer)
    mapper = PortMapper(40000, gateway="127.0.0.1", gateway_port=port, protocols=("pcp",), answer_wait=0.5)
    mapper.start()
    assert await mapper.wait_first_attempt(3) is None
    assert mapper.status.answers == {"pcp": "NOT_AUTHORIZED"}
    await mapper.close()


async def test_refresh_after_a_network_change_asks_again_at_once() -> None:
    gw, port = await gateway(pcp_ok(lifetime=600))
    changes = []
    mapper = PortMapper(40000, gateway="127.0.0.1", gateway_port=port, protocols=("pcp",), on_change=changes.append)
    mapper.start()
    assert await mapper.wait_first_attempt(3) is not None
    asked = len(gw.requests)
    mapper.refresh()
    assert changes[-1] is None  # the old mapping is forgotten at once
    for _ in range(100):
        if mapper.mapping is not None:
            break
        await asyncio.sleep(0.01)
    assert mapper.mapping is not None and len(gw.requests) > asked  # not after the 300 s renewal
    await mapper.close()
