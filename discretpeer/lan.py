"""LAN discovery through mDNS / DNS-SD (python-zeroconf), no beacon needed.

A peer publishes ``_discretpeer._udp.local.`` pointing at its one UDP socket, under a random
service name and a random host name (never the peer id nor the machine's host name), with a TXT
record carrying its random instance and the tokens it waits on (:mod:`discretpeer.proto.lan_txt`). It
browses the same type; a service carrying a token we wait on is reported as a :class:`LanSighting`.

Two layers, as elsewhere in the project:

* :class:`ServiceTable` — sans-I/O: fed (name, TXT bytes, port, addresses), returns the sightings
  to report. All bounds live here: at most ``max_services`` services, at most ``max_addresses``
  addresses per service, TXT records validated strictly (oversized or garbage ones are dropped).
* :class:`LanDiscovery` — asyncio: owns an :class:`~zeroconf.asyncio.AsyncZeroconf`, an
  :class:`~zeroconf.asyncio.AsyncServiceBrowser` and the registered service. Services whose
  records are not all cached yet are resolved by a few worker tasks from a bounded queue, so a
  flood of names costs a bounded amount of memory and queries.

Choices worth knowing:

* Probing (RFC 6762 §8.1) is skipped: the service name is 64 random bits, so a conflict is
  improbable, and probing would delay every start and every re-registration by ~1.5 s.
* Services are published only while there are tokens; ``set_tokens([])`` says goodbye.
* Loopback, multicast and unspecified addresses in a remote service are ignored (a LAN host must
  not make us send packets to our own loopback), as are IPv6 link-local addresses without a scope.
  Link-local IPv6 addresses keep their scope (``fe80::1%2``) since they are useless without it.
* zeroconf's own record cache is capped by zeroconf (10 000 records, oldest evicted first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import ifaddr
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from discretpeer.logs import get_logger
from discretpeer.proto.lan_txt import (
    MAX_LAN_TOKENS,
    SERVICE_TYPE,
    LanTxt,
    LanTxtError,
    decode_txt,
    encode_txt,
)
from discretpeer.proto.wire import INSTANCE_SIZE, TOKEN_SIZE, Address, WireError
from discretpeer.tasks import cancel_and_wait

__all__ = [
    "SERVICE_TYPE",
    "IpVersion",
    "LanDiscovery",
    "LanSighting",
    "ServiceTable",
    "DEFAULT_MAX_SERVICES",
    "DEFAULT_MAX_ADDRESSES",
]

log = get_logger("discretpeer.lan")

IpVersion = Literal["v4", "v6", "all"]
DEFAULT_MAX_SERVICES = 256
DEFAULT_MAX_ADDRESSES = 8
MAX_PUBLISHED_ADDRESSES = 8
MAX_HOSTS_EXAMINED = 64  # addresses of one service looked at before the per-service cap applies
RESOLVE_WORKERS = 4
DEFAULT_RESOLVE_TIMEOUT = 3.0  # seconds

_ZC_VERSION = {"v4": IPVersion.V4Only, "v6": IPVersion.V6Only, "all": IPVersion.All}


@dataclass(frozen=True)
class LanSighting:
    """A service on the LAN that carries ``token``: the peer ``instance`` listens at ``addresses``
    (each with the service's port; IPv4 first, link-local IPv6 last, at most ``max_addresses``)."""

    token: bytes
    instance: bytes
    addresses: tuple[Address, ...]


@dataclass
class _Service:
    txt: bytes
    instance: bytes
    tokens: tuple[bytes, ...]
    addresses: tuple[Address, ...]
    reported: dict[bytes, tuple[Address, ...]] = field(default_factory=dict)


def _worth_logging(count: int) -> bool:
    """Log the first few occurrences of a LAN-triggered event, then every 1000th: a flood must
    not turn into a flood of log lines."""
    return count <= 3 or count % 1000 == 0


def _address_order(addr: Address) -> tuple[int, int, int, str]:
    ip = addr.ip
    return (ip.version, 1 if ip.is_link_local else 0, int(ip), addr.host)


class ServiceTable:
    """Services seen on the LAN and which sightings were reported (sans-I/O, bounded).

    When the table is full, a new service that carries a wanted token evicts the oldest service
    that carries none; any other new service is dropped (and counted in ``stats``).
    """

    def __init__(
        self,
        own_instance: bytes,
        *,
        max_services: int = DEFAULT_MAX_SERVICES,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        ip_version: IpVersion = "all",
        link_local_scope: int | None = None,
    ) -> None:
        if max_services < 1 or max_addresses < 1:
            raise ValueError("max_services and max_addresses must be at least 1")
        if ip_version not in _ZC_VERSION:
            raise ValueError(f"ip_version must be 'v4', 'v6' or 'all', not {ip_version!r}")
        self.own_instance = own_instance
        self.max_services = max_services
        self.max_addresses = max_addresses
        self.ip_version = ip_version
        #: interface index given to unscoped link-local IPv6 addresses (when only one interface
        #: can have sent them); None: such addresses are dropped
        self.link_local_scope = link_local_scope
        self._services: dict[str, _Service] = {}
        self._wanted: frozenset[bytes] = frozenset()
        self.stats: dict[str, int] = {"invalid_txt": 0, "own": 0, "full": 0, "evicted": 0}

    def __len__(self) -> int:
        return len(self._services)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._services

    @property
    def wanted(self) -> frozenset[bytes]:
        return self._wanted

    def names(self) -> list[str]:
        return list(self._services)

    def set_wanted(self, tokens: Iterable[bytes]) -> list[LanSighting]:
        """Replace the tokens we wait on; returns sightings of known services that now match."""
        self._wanted = frozenset(tokens)
        found: list[LanSighting] = []
        for service in self._services.values():
            found += self._report(service)
        return found

    def update(self, name: str, txt: bytes, port: int | None, hosts: Iterable[str]) -> list[LanSighting]:
        """A service's current records; returns the sightings to report (possibly none).

        An invalid TXT record or port removes the service: stale data must not outlive it."""
        key = name.lower()
        service = self._services.get(key)
        if service is not None and service.txt == txt:
            parsed = LanTxt(service.instance, service.tokens)
        else:
            try:
                parsed = decode_txt(txt)
            except LanTxtError as exc:
                self.stats["invalid_txt"] += 1
                if _worth_logging(self.stats["invalid_txt"]):
                    log.debug("lan.invalid_txt", service=name[:64], reason=str(exc), count=self.stats["invalid_txt"])
                self._services.pop(key, None)
                return []
        if parsed.instance == self.own_instance:
            self.stats["own"] += 1
            return []
        if port is None or not 0 < port < 65536:
            self.stats["invalid_txt"] += 1
            self._services.pop(key, None)
            return []
        addresses = self._addresses(hosts, port)
        if service is None:
            if len(self._services) >= self.max_services and not self._make_room(parsed.tokens):
                self.stats["full"] += 1
                if _worth_logging(self.stats["full"]):
                    log.warning("lan.table_full", max_services=self.max_services, dropped=self.stats["full"])
                return []
            service = _Service(txt=txt, instance=parsed.instance, tokens=parsed.tokens, addresses=addresses)
            self._services[key] = service
        else:
            if service.instance != parsed.instance:
                service.reported.clear()
            service.txt = txt
            service.instance = parsed.instance
            service.tokens = parsed.tokens
            service.addresses = addresses
        return self._report(service)

    def remove(self, name: str) -> bool:
        return self._services.pop(name.lower(), None) is not None

    def clear(self) -> None:
        self._services.clear()

    # --- internals ------------------------------------------------------------------------------

    def _make_room(self, tokens: tuple[bytes, ...]) -> bool:
        if self._wanted.isdisjoint(tokens):
            return False
        for key, service in self._services.items():  # oldest first
            if self._wanted.isdisjoint(service.tokens):
                del self._services[key]
                self.stats["evicted"] += 1
                return True
        return False

    def _addresses(self, hosts: Iterable[str], port: int) -> tuple[Address, ...]:
        found: set[Address] = set()
        for n, host in enumerate(hosts):
            if n >= MAX_HOSTS_EXAMINED:
                break
            try:
                addr = Address(str(host), port)
                ip = addr.ip
            except (WireError, ValueError):
                continue
            if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
                continue
            if (ip.version == 4 and self.ip_version == "v6") or (ip.version == 6 and self.ip_version == "v4"):
                continue
            if isinstance(ip, ipaddress.IPv6Address):
                if ip.ipv4_mapped is not None:
                    continue
                if ip.is_link_local and not ip.scope_id:
                    if self.link_local_scope is None:
                        continue
                    addr = Address(f"{addr.host}%{self.link_local_scope}", port)
            found.add(addr)
        return tuple(sorted(found, key=_address_order)[: self.max_addresses])

    def _report(self, service: _Service) -> list[LanSighting]:
        matching = [t for t in service.tokens if t in self._wanted] if service.addresses else []
        for token in list(service.reported):
            if token not in matching:
                del service.reported[token]
        found = []
        for token in matching:
            if service.reported.get(token) != service.addresses:
                service.reported[token] = service.addresses
                found.append(LanSighting(token=token, instance=service.instance, addresses=service.addresses))
        return found


@dataclass(frozen=True)
class _LocalInterfaces:
    choice: list[str | int]  # zeroconf's interface choice: IPv4 addresses and IPv6 interface indexes
    publish: list[str]  # addresses to put in our service, best first
    v6_indexes: list[int]  # non-loopback interfaces with IPv6


def _local_interfaces(interfaces: list[str] | None, ip_version: IpVersion) -> _LocalInterfaces:
    adapters = ifaddr.get_adapters()
    names = {adapter.nice_name for adapter in adapters}
    if interfaces is not None:
        unknown = [name for name in interfaces if name not in names]
        if unknown:
            raise ValueError(f"unknown network interface(s): {', '.join(unknown)}")
    choice: list[str | int] = []
    publish: set[str] = set()
    v6_indexes: list[int] = []
    for adapter in adapters:
        explicit = interfaces is not None and adapter.nice_name in interfaces
        if interfaces is not None and not explicit:
            continue
        for ip in adapter.ips:
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address
            if ip.is_IPv4 and ip_version != "v6":
                addr = ipaddress.IPv4Address(ip.ip)
                choice.append(str(addr))
            elif ip.is_IPv6 and ip_version != "v4" and adapter.index is not None:
                addr = ipaddress.IPv6Address(ip.ip[0].split("%", 1)[0])
                if adapter.index not in choice:
                    choice.append(adapter.index)
                if not addr.is_loopback and adapter.index not in v6_indexes:
                    v6_indexes.append(adapter.index)
            else:
                continue
            if (addr.is_loopback and not explicit) or addr.is_multicast or addr.is_unspecified:
                continue
            publish.add(str(addr))
    ordered = sorted(publish, key=lambda a: _address_order(Address(a, 1)))
    return _LocalInterfaces(choice=choice, publish=ordered, v6_indexes=v6_indexes)


class LanDiscovery:
    """Publish our tokens and find peers waiting on them on the LAN (mDNS / DNS-SD).

    ``on_found`` is called from the event loop for every sighting: a service that is not ours
    (compared by instance) carries a token we wait on. It is called again when that service's
    addresses change or it starts carrying another wanted token, never twice for the same
    (service, token, addresses). It must not block; exceptions from it are logged and ignored.
    A peer announcing two tokens we both wait on (e.g. current and previous rotation window)
    gives two sightings with the same instance.
    """

    def __init__(
        self,
        *,
        port: int,
        instance: bytes,
        on_found: Callable[[LanSighting], None],
        interfaces: list[str] | None = None,
        ip_version: IpVersion = "all",
        max_services: int = DEFAULT_MAX_SERVICES,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        if not isinstance(instance, bytes) or len(instance) != INSTANCE_SIZE:
            raise ValueError(f"instance must be {INSTANCE_SIZE} bytes")
        if ip_version not in _ZC_VERSION:
            raise ValueError(f"ip_version must be 'v4', 'v6' or 'all', not {ip_version!r}")
        if interfaces is not None and not interfaces:
            raise ValueError("interfaces must be None (all) or a non-empty list of names")
        self.port = port
        self.instance = instance
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.ip_version: IpVersion = ip_version
        self.resolve_timeout = resolve_timeout
        self._on_found = on_found
        self.table = ServiceTable(
            instance, max_services=max_services, max_addresses=max_addresses, ip_version=ip_version
        )
        self.max_pending = max_services
        label = secrets.token_hex(8)  # random: no identity, no host name on the LAN
        self.service_name = f"{label}.{SERVICE_TYPE}"
        self._server = f"dp-{label}.local."
        self._tokens: tuple[bytes, ...] = ()
        self._published_tokens: tuple[bytes, ...] = ()
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._lock = asyncio.Lock()
        self._broadcasts: set[asyncio.Future[Any]] = set()
        self._running = False
        self._closed = False
        self.stats: dict[str, int] = {"resolve_dropped": 0, "resolve_failed": 0, "callback_errors": 0}

    # --- public API -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def tokens(self) -> tuple[bytes, ...]:
        """The tokens we wait on (all of them)."""
        return self._tokens

    @property
    def published_tokens(self) -> tuple[bytes, ...]:
        """The tokens in our TXT record (at most MAX_LAN_TOKENS)."""
        return self._published_tokens

    @property
    def published_addresses(self) -> list[str]:
        return self._info.parsed_addresses() if self._info is not None else []

    async def __aenter__(self) -> LanDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._running or self._closed:
            raise RuntimeError("LanDiscovery can be started once")
        local = _local_interfaces(self.interfaces, self.ip_version)
        choice = local.choice
        if not choice:
            raise RuntimeError(f"no {self.ip_version} address on interfaces {self.interfaces or 'any'}")
        zc_version = _ZC_VERSION[self.ip_version]
        if self.ip_version == "all":
            has_v4 = any(isinstance(c, str) for c in choice)
            has_v6 = any(isinstance(c, int) for c in choice)
            zc_version = IPVersion.All if has_v4 and has_v6 else IPVersion.V4Only if has_v4 else IPVersion.V6Only
        if len(local.v6_indexes) == 1:  # a link-local address can only have come from there
            self.table.link_local_scope = local.v6_indexes[0]
        self._aiozc = AsyncZeroconf(interfaces=choice, ip_version=zc_version)
        self._running = True
        try:
            self._workers = [asyncio.create_task(self._resolve_worker()) for _ in range(RESOLVE_WORKERS)]
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_service_state_change]
            )
            async with self._lock:
                await self._publish()
        except BaseException:
            await self.close()
            raise
        log.debug("lan.started", service=self.service_name, ip_version=self.ip_version)

    async def close(self) -> None:
        """Stop browsing, say goodbye for our service, release the sockets. Idempotent."""
        self._closed = True
        if not self._running and self._aiozc is None:
            return
        self._running = False
        await cancel_and_wait(*self._workers)
        self._workers = []
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        async with self._lock:  # not while set_tokens is (re)registering
            self._cancel_broadcasts()  # no announcement after the goodbye
            if self._aiozc is not None:
                aiozc, self._aiozc = self._aiozc, None
                try:
                    await aiozc.async_close()  # sends goodbyes for our service
                except Exception:  # pragma: no cover - zeroconf shutdown trouble must not propagate
                    log.exception("lan.close_failed")
        self._info = None
        self._pending.clear()
        self.table.clear()

    async def set_tokens(self, tokens: Iterable[bytes]) -> None:
        """The tokens we wait on (replacing the previous ones). Updates our TXT record, or says
        goodbye when there are none; reports known services that carry a newly wanted token.

        Our published addresses are read again on every call: calling it with the same tokens
        after a network change re-announces the service only if something changed."""
        unique = tuple(dict.fromkeys(tokens))
        for token in unique:
            if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
                raise ValueError(f"tokens must be {TOKEN_SIZE} bytes")
        if len(unique) > MAX_LAN_TOKENS:
            log.warning(
                "lan.too_many_tokens",
                tokens=len(unique),
                published=MAX_LAN_TOKENS,
                hint="only the first tokens are published on the LAN; all are matched",
            )
        self._tokens = unique
        self._deliver(self.table.set_wanted(unique))
        async with self._lock:
            self._published_tokens = unique[:MAX_LAN_TOKENS]
            if self._running:
                await self._publish()

    # --- publishing -----------------------------------------------------------------------------

    async def _publish(self) -> None:
        if self._aiozc is None or not self._running:
            return
        if not self._published_tokens:
            if self._info is not None:
                info, self._info = self._info, None
                self._cancel_broadcasts()  # else a late announcement would follow the goodbye
                await (await self._aiozc.async_unregister_service(info))
            return
        addresses = _local_interfaces(self.interfaces, self.ip_version).publish
        if not addresses:
            log.warning("lan.no_address_to_publish", interfaces=self.interfaces, ip_version=self.ip_version)
        info = ServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            port=self.port,
            properties=encode_txt(LanTxt(self.instance, self._published_tokens)),
            server=self._server,
            parsed_addresses=addresses[:MAX_PUBLISHED_ADDRESSES],
        )
        if (
            self._info is not None
            and set(decode_txt(self._info.text).tokens) == set(self._published_tokens)
            and info.addresses == self._info.addresses
        ):
            return  # nothing changed (token order aside): no announcement traffic
        self._cancel_broadcasts()  # announcements of the previous records must stop
        if self._info is None:
            broadcast = await self._aiozc.async_register_service(info, cooperating_responders=True)
        else:
            broadcast = await self._aiozc.async_update_service(info)
        self._info = info
        future = asyncio.ensure_future(broadcast)
        self._broadcasts.add(future)
        future.add_done_callback(self._broadcast_done)

    def _cancel_broadcasts(self) -> None:
        for future in self._broadcasts:
            future.cancel()
        self._broadcasts.clear()

    def _broadcast_done(self, future: asyncio.Future[Any]) -> None:
        self._broadcasts.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("lan.broadcast_failed", error=repr(future.exception()))

    # --- browsing -------------------------------------------------------------------------------

    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Called by zeroconf in the event loop; must never raise into it."""
        try:
            if not self._running:
                return
            if state_change is ServiceStateChange.Removed:
                self.table.remove(name)
                return
            self._refresh(zeroconf, name)
        except Exception:  # pragma: no cover - defensive: zeroconf's loop must survive
            log.exception("lan.browse_handler_failed", service=name[:64])

    def _refresh(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if info.load_from_cache(zeroconf):
            self._apply(name, info)
            return
        if info.text:  # TXT already cached: reject garbage and our own service without a query
            try:
                if decode_txt(info.text).instance == self.instance:
                    return
            except LanTxtError:
                self.table.update(name, info.text, info.port, ())  # counts and drops it
                return
        if name in self._pending:
            return
        if len(self._pending) >= self.max_pending:
            self.stats["resolve_dropped"] += 1
            if _worth_logging(self.stats["resolve_dropped"]):
                log.warning(
                    "lan.resolve_queue_full", max_pending=self.max_pending, dropped=self.stats["resolve_dropped"]
                )
            return
        self._pending.add(name)
        self._queue.put_nowait(name)

    async def _resolve_worker(self) -> None:
        while True:
            name = await self._queue.get()
            try:
                if not self._running or self._aiozc is None:
                    continue
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                if await info.async_request(self._aiozc.zeroconf, int(self.resolve_timeout * 1000)):
                    if self._running:
                        self._apply(name, info)
                else:
                    self.stats["resolve_failed"] += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lan.resolve_failed", service=name[:64])
            finally:
                self._pending.discard(name)

    def _apply(self, name: str, info: ServiceInfo) -> None:
        hosts = info.parsed_scoped_addresses(_ZC_VERSION[self.ip_version])
        self._deliver(self.table.update(name, info.text, info.port, hosts))

    def _deliver(self, sightings: list[LanSighting]) -> None:
        for sighting in sightings:
            try:
                self._on_found(sighting)
            except Exception:
                self.stats["callback_errors"] += 1
                log.exception("lan.on_found_failed")
