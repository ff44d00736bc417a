"""UPnP-IGD port mapping through async-upnp-client (SSDP search, then SOAP AddPortMapping).

UPnP is XML over HTTP found by multicast: a maintained library beats a codec of our own here.
We do not insist on the gateway saying it is "Connected" (miniupnpd behind a reserved WAN address
says it is not, yet maps). Every step has a timeout; errors become ``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import sys
import threading
from typing import Any
from urllib.parse import urlparse

from discretpeer.addresses import Addr
from discretpeer.tasks import wait_for

log = logging.getLogger("discretpeer.portmap")

IGD_TARGETS = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
)
WAN_SERVICES = ("WANIPConnection", "WANPPPConnection")
DESCRIPTION = "discretpeer"


_UPNP_MODULES = ("async_upnp_client.aiohttp", "async_upnp_client.client_factory", "async_upnp_client.search")


async def _import_off_the_loop(timeout: float) -> None:
    """Import the UPnP client (aiohttp and friends) in a daemon thread, bounded: the import is
    heavy and was seen to stall for tens of seconds inside the NAT lab's namespaces, which on the
    event loop froze every connection of the peer. A stalled import makes UPnP fail (like a
    silent gateway); a daemon thread never holds up the process's exit."""
    if all(name in sys.modules for name in _UPNP_MODULES):
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def work() -> None:
        error: BaseException | None = None
        try:
            for name in _UPNP_MODULES:
                importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop may be closed by then
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name="upnp-import", daemon=True).start()
    await wait_for(asyncio.shield(done), timeout)


class UpnpMapper:
    """Finds the IGD once, then maps/unmaps UDP ports on it."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self.last_error: str | None = None
        self._device: Any = None
        self._local_ip: str | None = None

    async def _find(self) -> Any:
        await _import_off_the_loop(self.timeout)
        from async_upnp_client.aiohttp import AiohttpRequester
        from async_upnp_client.client_factory import UpnpFactory
        from async_upnp_client.search import async_search

        loop = asyncio.get_running_loop()
        found: asyncio.Future[str] = loop.create_future()

        async def on_response(headers: Any) -> None:
            location = headers.get("location")
            target = str(headers.get("st", ""))
            if location and not found.done() and any(t in target for t in ("InternetGatewayDevice", "WAN")):
                found.set_result(location)

        searches = [
            asyncio.ensure_future(async_search(on_response, timeout=max(1, int(self.timeout)), search_target=target))
            for target in IGD_TARGETS
        ]
        try:
            location = await wait_for(asyncio.shield(found), self.timeout + 0.5)
        finally:
            for search in searches:
                search.cancel()
            await asyncio.gather(*searches, return_exceptions=True)
        host = urlparse(location).hostname or ""
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as probe:
            probe.connect((host, 9))  # no packet: only asks the kernel which source address it would use
            self._local_ip = probe.getsockname()[0]
        factory = UpnpFactory(AiohttpRequester(timeout=max(1, int(self.timeout))), non_strict=True)
        return await factory.async_create_device(location)

    def _action(self, name: str) -> Any:
        for service in self._device.all_services:
            if any(s in service.service_type for s in WAN_SERVICES) and service.has_action(name):
                return service.action(name)
        raise LookupError(f"the gateway has no {name}")

    async def map(self, internal_port: int, lifetime: int, suggested: int | None) -> Addr | None:
        """Map UDP ``internal_port`` (external port = suggested or the same); (ip, port) or None."""
        try:
            if self._device is None:
                self._device = await self._find()
            external_port = suggested or internal_port
            await wait_for(
                self._action("AddPortMapping").async_call(
                    NewRemoteHost="",
                    NewExternalPort=external_port,
                    NewProtocol="UDP",
                    NewInternalPort=internal_port,
                    NewInternalClient=self._local_ip,
                    NewEnabled=True,
                    NewPortMappingDescription=DESCRIPTION,
                    NewLeaseDuration=lifetime,
                ),
                self.timeout,
            )
            result = await wait_for(self._action("GetExternalIPAddress").async_call(), self.timeout)
            ip = result.get("NewExternalIPAddress") or ""
            socket.inet_aton(ip)  # a gateway answering garbage: ValueError/OSError, caught below
            if ip == "0.0.0.0":
                raise ValueError("gateway has no external address")
            self.last_error = None
            return ip, external_port
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a remote box: reported, never raised
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.info("UPnP mapping failed: %s", self.last_error)
            return None

    async def unmap(self, external_port: int) -> None:
        if self._device is None:
            return
        with contextlib.suppress(Exception):
            await wait_for(
                self._action("DeletePortMapping").async_call(
                    NewRemoteHost="", NewExternalPort=external_port, NewProtocol="UDP"
                ),
                self.timeout,
            )
            log.info("UPnP mapping of port %s deleted", external_port)
