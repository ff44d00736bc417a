"""Ask the gateway for a public port by PCP, NAT-PMP and UPnP-IGD at once; keep the first granted.

A gateway that does not answer never delays anything: the peer connects without a mapping and
announces one only once granted. Every wait is bounded (a few retransmissions over ~2 s), the
mapping is renewed at half its lifetime, and deleted on close. Answers that are garbage, for
another port, with another nonce or from another address are ignored, counted and logged (the
first few of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from discretpeer.addresses import Addr
from discretpeer.portmap import natpmp, pcp
from discretpeer.portmap.gateway import default_gateway
from discretpeer.tasks import wait_for

log = logging.getLogger("discretpeer.portmap")

DEFAULT_LIFETIME = 7200  # seconds asked for; gateways may grant less
RETRANSMIT = (0.0, 0.25, 0.75)  # send times (s): RFC 6887 §8.1.1 style, but bounded
ANSWER_WAIT = 2.0  # after the first send, how long to listen for an answer
RETRY_AFTER = 60.0  # after a failed attempt, when to ask again
MIN_RENEW = 10.0  # never renew more often than this, whatever lifetime is granted
MAX_LOGGED = 5  # bad answers logged per mapper (the rest are only counted)
MAX_READS = 64  # answers read per attempt: a gateway flooding us cannot keep us busy


@dataclass(frozen=True)
class Mapping:
    """A granted mapping: ``external`` (ip, port) forwards to our ``internal_port``."""

    protocol: str  # "pcp", "natpmp" or "upnp"
    external: Addr
    internal_port: int
    lifetime: float
    granted_at: float
    epoch: int | None = None


@dataclass
class PortMapStatus:
    """What the mapper saw, for ``doctor`` and the logs."""

    gateway: str | None = None
    attempts: int = 0
    answers: dict[str, str] = field(default_factory=dict)  # protocol -> last result name
    ignored: int = 0  # bad answers dropped
    mapping: Mapping | None = None
    seconds_to_map: float | None = None


class _GatewayProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(MAX_READS)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(data[: pcp.MAX_MESSAGE + 1])

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: no PCP there
        pass


class PortMapper:
    """Keeps one UDP port mapped on the gateway while running.

    ``on_change(mapping or None)`` is called when a mapping is granted, changes or is lost.
    ``protocols``: any of ``"pcp"``, ``"natpmp"``, ``"upnp"``.
    """

    def __init__(
        self,
        internal_port: int,
        *,
        on_change: Callable[[Mapping | None], None] = lambda m: None,
        gateway: str | None = None,
        gateway_port: int = pcp.PCP_PORT,
        protocols: tuple[str, ...] = ("pcp", "natpmp", "upnp"),
        lifetime: int = DEFAULT_LIFETIME,
        answer_wait: float = ANSWER_WAIT,
        retry_after: float = RETRY_AFTER,
        min_renew: float = MIN_RENEW,
    ) -> None:
        self.internal_port = internal_port
        self.on_change = on_change
        self.gateway_port = gateway_port
        self.protocols = tuple(p for p in protocols if p in ("pcp", "natpmp", "upnp"))
        self.lifetime = lifetime
        self.answer_wait = answer_wait
        self.retry_after = retry_after
        self.min_renew = min_renew
        self.status = PortMapStatus(gateway=gateway)
        self._gateway_given = gateway is not None
        self._nonce = os.urandom(pcp.NONCE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._logged = 0
        self._upnp: Any = None  # the UPnP helper holding the mapping, when UPnP won
        self._first_done = asyncio.Event()
        self._asked: set[str] = set()  # protocols we sent requests by (all are told on delete)

    @property
    def mapping(self) -> Mapping | None:
        return self.status.mapping

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def refresh(self) -> None:
        """Ask again now (after a network change): the old mapping is forgotten, not deleted
        (its gateway may be gone), and every protocol is tried afresh."""
        if self._task is None:
            return
        self._task.cancel()
        if self.status.mapping is not None:
            self.status.mapping = None
            self.on_change(None)
        self._upnp = None
        self._task = asyncio.ensure_future(self._run())

    async def wait_first_attempt(self, timeout: float) -> Mapping | None:
        """Wait (bounded) until the first attempt has ended; the mapping, if any."""
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self._first_done.wait(), timeout)
        return self.mapping

    async def close(self, timeout: float = 1.0) -> None:
        """Stop renewing and delete the mapping (one bounded try)."""
        if self._task is not None:
            self._task.cancel()
            # bounded: a UPnP call in flight may take its own time to notice the cancellation
            await asyncio.wait({self._task}, timeout=timeout)
        mapping, self.status.mapping = self.status.mapping, None
        if mapping is not None:
            with contextlib.suppress(Exception):
                await wait_for(self._delete(mapping), timeout)

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if not self._gateway_given:
                self.status.gateway = default_gateway()
            mapping = await self._attempt() if self.status.gateway or "upnp" in self.protocols else None
            if self.status.seconds_to_map is None and mapping is not None:
                self.status.seconds_to_map = loop.time() - started
            self._first_done.set()
            if mapping != self.status.mapping:
                old = self.status.mapping
                self.status.mapping = mapping
                if mapping is None:
                    log.info("port mapping lost (was %s:%s)", *(old.external if old else ("?", 0)))
                else:
                    log.info("port mapped by %s: %s:%s -> %s", mapping.protocol, *mapping.external, self.internal_port)
                self.on_change(mapping)
            if mapping is None:
                await asyncio.sleep(self.retry_after)
            else:
                await asyncio.sleep(max(self.min_renew, mapping.lifetime / 2))

    async def _attempt(self) -> Mapping | None:
        """One attempt by every protocol at once (renewal by the current one): first success wins."""
        self.status.attempts += 1
        current = self.status.mapping
        wanted = (current.protocol,) if current is not None else self.protocols
        udp = [p for p in wanted if p in ("pcp", "natpmp")]
        self._asked.update(wanted)
        tasks: list[asyncio.Task[Mapping | None]] = []
        if udp and self.status.gateway:
            tasks.append(asyncio.ensure_future(self._ask_udp(udp, current)))
        if "upnp" in wanted:
            tasks.append(asyncio.ensure_future(self._ask_upnp(current)))
        winner: Mapping | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                with contextlib.suppress(Exception):
                    result = await next_done
                    if result is not None:
                        winner = result
                        break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return winner

    # --- PCP and NAT-PMP (one socket, same port: told apart by the version byte) --------------

    async def _gateway_socket(self) -> tuple[asyncio.DatagramTransport, _GatewayProtocol]:
        """A UDP socket connected to the gateway's PCP/NAT-PMP port."""
        assert self.status.gateway is not None
        return await asyncio.get_running_loop().create_datagram_endpoint(
            _GatewayProtocol, remote_addr=(self.status.gateway, self.gateway_port), family=socket.AF_INET
        )

    async def _ask_udp(self, protocols: list[str], current: Mapping | None) -> Mapping | None:
        transport, proto = await self._gateway_socket()
        try:
            client_ip = transport.get_extra_info("sockname")[0]
            suggested = current.external[1] if current is not None else self.internal_port
            requests = []
            if "pcp" in protocols:
                requests.append(
                    pcp.MapRequest(self._nonce, client_ip, self.internal_port, self.lifetime, suggested).encode()
                )
            if "natpmp" in protocols:
                requests += [natpmp.address_request(), natpmp.map_request(self.internal_port, suggested, self.lifetime)]
            return await self._exchange(transport, proto, requests, current)
        finally:
            transport.close()

    async def _exchange(
        self,
        transport: asyncio.DatagramTransport,
        proto: _GatewayProtocol,
        requests: list[bytes],
        current: Mapping | None,
    ) -> Mapping | None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.answer_wait
        sends = list(RETRANSMIT)
        natpmp_ip: str | None = None
        natpmp_map: natpmp.MapResponse | None = None
        reads = 0
        while reads < MAX_READS:
            now = loop.time()
            while sends and now >= start + sends[0]:
                sends.pop(0)
                for request in requests:
                    transport.sendto(request)
            wake = min(deadline, start + sends[0]) if sends else deadline
            if now >= deadline:
                return None
            try:
                data = await wait_for(proto.queue.get(), max(0.0, wake - now))
            except TimeoutError:
                continue
            reads += 1
            if data[:1] == bytes([pcp.VERSION]):
                mapping = self._pcp_answer(data, current)
                if mapping is not None:
                    return mapping
                continue
            try:
                answer = natpmp.decode(data)
            except natpmp.NatPmpError as exc:
                self._ignore(f"unreadable gateway answer: {exc}")
                continue
            if answer.result != 0:
                name = answer.result_name if isinstance(answer, natpmp.MapResponse) else f"result {answer.result}"
                self.status.answers["natpmp"] = name
                if isinstance(answer, natpmp.MapResponse):
                    log.info("NAT-PMP refused the mapping: %s", name)
                continue
            if isinstance(answer, natpmp.AddressResponse):
                natpmp_ip = answer.external_ip
                self._check_epoch(current, "natpmp", answer.epoch)
            elif answer.internal_port != self.internal_port:
                self._ignore(f"NAT-PMP mapping for port {answer.internal_port}, not {self.internal_port}")
                continue
            elif answer.lifetime == 0 or answer.external_port == 0:
                self._ignore("NAT-PMP mapping with no lifetime or no port")
                continue
            else:
                natpmp_map = answer
            if natpmp_ip and natpmp_map is not None:
                self.status.answers["natpmp"] = "SUCCESS"
                if natpmp_ip in ("0.0.0.0",):
                    self._ignore("NAT-PMP gateway has no external address")
                    natpmp_ip = None
                    continue
                return Mapping(
                    "natpmp",
                    (natpmp_ip, natpmp_map.external_port),
                    self.internal_port,
                    float(natpmp_map.lifetime),
                    time.monotonic(),
                    natpmp_map.epoch,
                )
        return None

    def _pcp_answer(self, data: bytes, current: Mapping | None) -> Mapping | None:
        try:
            answer = pcp.MapResponse.decode(data)
        except pcp.PcpError as exc:
            self._ignore(f"unreadable PCP answer: {exc}")
            return None
        if answer.nonce and answer.nonce != self._nonce:
            self._ignore("PCP answer with another nonce")
            return None
        self.status.answers["pcp"] = answer.result_name
        if answer.result != 0:
            log.info("PCP refused the mapping: %s", answer.result_name)
            return None
        if answer.internal_port != self.internal_port:
            self._ignore(f"PCP mapping for port {answer.internal_port}, not {self.internal_port}")
            return None
        if answer.external_port == 0 or answer.lifetime == 0 or answer.external_ip in ("0.0.0.0", "::"):
            self._ignore("PCP mapping with no port, address or lifetime")
            return None
        self._check_epoch(current, "pcp", answer.epoch)
        return Mapping(
            "pcp",
            (answer.external_ip, answer.external_port),
            self.internal_port,
            float(answer.lifetime),
            time.monotonic(),
            answer.epoch,
        )

    def _check_epoch(self, current: Mapping | None, protocol: str, epoch: int) -> None:
        """RFC 6886 §3.6 / RFC 6887 §8.5: an epoch that went back means the gateway lost its
        state (rebooted); the answer being handled re-creates the mapping, so only say so."""
        if current is None or current.epoch is None or current.protocol != protocol:
            return
        elapsed = time.monotonic() - current.granted_at
        if epoch + 2 < current.epoch + elapsed * 7 / 8:
            log.info(
                "%s gateway epoch went back (%s after %s): it lost its mappings; mapping again",
                protocol,
                epoch,
                current.epoch,
            )

    def _ignore(self, why: str) -> None:
        self.status.ignored += 1
        if self._logged < MAX_LOGGED:
            self._logged += 1
            log.info("ignored a gateway answer: %s", why)

    # --- UPnP-IGD ----------------------------------------------------------------------------

    async def _ask_upnp(self, current: Mapping | None) -> Mapping | None:
        from discretpeer.portmap.upnp import UpnpMapper

        if self._upnp is None:
            self._upnp = UpnpMapper(timeout=self.answer_wait)
        external = await self._upnp.map(self.internal_port, self.lifetime, current.external[1] if current else None)
        self.status.answers["upnp"] = "SUCCESS" if external is not None else (self._upnp.last_error or "no answer")
        if external is None:
            return None
        return Mapping("upnp", external, self.internal_port, float(self.lifetime), time.monotonic())

    # --- delete --------------------------------------------------------------------------------

    async def _delete(self, mapping: Mapping) -> None:
        """Delete by every protocol we asked: a gateway speaking several keeps one mapping but
        labels it by the last protocol that touched it, and refuses deletes by the others."""
        tasks = []
        if "upnp" in self._asked and self._upnp is not None:
            tasks.append(self._upnp.unmap(mapping.external[1]))
        udp: list[str] = [p for p in ("pcp", "natpmp") if p in self._asked]
        if udp and self.status.gateway:
            tasks.append(self._delete_udp(udp))
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("port mapping %s:%s deleted", *mapping.external)

    async def _delete_udp(self, protocols: list[str]) -> None:
        transport, proto = await self._gateway_socket()
        try:
            client_ip = transport.get_extra_info("sockname")[0]
            requests = []
            if "pcp" in protocols:
                requests.append(pcp.MapRequest(self._nonce, client_ip, self.internal_port, 0, 0).encode())
            if "natpmp" in protocols:
                requests.append(natpmp.map_request(self.internal_port, 0, 0))
            for _ in range(2):
                for request in requests:
                    transport.sendto(request)
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(proto.queue.get(), 0.25)
                    break
        finally:
            transport.close()
