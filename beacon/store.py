"""Where the meeting table lives: one small interface, two implementations.

* :class:`MemoryStore` (the default): today's :class:`~beacon.meetings.MeetingTable` in this
  process, every call answered at once. ``python -m beacon`` with no ``store`` setting uses it.
* :class:`beacon.store_redis.RedisStore`: one table shared by several worker processes and
  machines through Redis (``store = "redis://..."``), so that they act as one beacon.

The server feeds a store the same calls it used to make on the table (join, announce,
introduced, remove). An announce on a shared store cannot be answered without a round trip, so
:meth:`MeetingStore.announce` returns the :class:`~beacon.meetings.Announced` result at once
when it can (the memory store always does) or ``None``, and the store hands the result to
``hooks.announced`` later. Introductions and evictions decided elsewhere (another worker, another
machine) for a connection held here arrive through ``hooks.introduce`` / ``hooks.evicted``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Protocol

from beacon.meetings import Announced, MeetingTable, TooManyTokens
from discretpeer.proto.wire import Address, Introduction

Key = Hashable

__all__ = ["Announced", "MeetingStore", "MemoryStore", "make_store", "StoreHooks", "StoreUnavailable", "TooManyTokens"]


class StoreUnavailable(Exception):
    """The shared store cannot be reached at start (``str()`` names the URL, one line)."""


class StoreHooks(Protocol):
    """What a store calls back on the server (all on the event loop, never re-entrantly)."""

    def announced(self, key: Key, result: Announced) -> None:
        """The result of an announce that :meth:`MeetingStore.announce` did not answer at once."""

    def introduce(self, key: Key, introduction: Introduction) -> None:
        """Another worker/machine introduced a connection held here."""

    def evicted(self, key: Key, token: bytes) -> None:
        """A connection held here lost its place on ``token`` to a newcomer elsewhere."""

    def relay_message(self, key: Key | None, message: dict[str, Any]) -> None:
        """A relay request/grant/ending from another worker (see :mod:`beacon.relay_link`)."""


class MeetingStore(Protocol):
    shared: bool  # True when other processes see the same table (several workers need it)
    max_peers_per_token: int

    async def start(self, hooks: StoreHooks) -> None: ...

    async def stop(self) -> None: ...

    def join(self, key: Key, instance: bytes, observed: Address) -> None: ...

    def set_mapping(self, key: Key, mapping: int) -> None:
        """What the connection learned of its NAT's mapping (wire.MAPPING_*), carried in the
        introductions of it from its next announce on."""

    def announce(
        self,
        key: Key,
        add: Iterable[bytes] = (),
        withdraw: Iterable[bytes] = (),
        candidates: tuple[Address, ...] | None = None,
    ) -> Announced | None: ...

    def introduced(self, key: Key, token: bytes, instance: bytes) -> list[Key]: ...

    def remove(self, key: Key) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class MemoryStore:
    """The in-process table (default): exactly the behaviour of :class:`MeetingTable`."""

    shared = False

    def __init__(self, table: MeetingTable) -> None:
        self.table = table
        self.max_peers_per_token = table.max_peers_per_token

    async def start(self, hooks: StoreHooks) -> None:
        return None

    async def stop(self) -> None:
        return None

    def join(self, key: Key, instance: bytes, observed: Address) -> None:
        self.table.join(key, instance, observed)

    def set_mapping(self, key: Key, mapping: int) -> None:
        self.table.set_mapping(key, mapping)

    def announce(
        self,
        key: Key,
        add: Iterable[bytes] = (),
        withdraw: Iterable[bytes] = (),
        candidates: tuple[Address, ...] | None = None,
    ) -> Announced | None:
        return self.table.announce(key, add, withdraw, candidates)

    def introduced(self, key: Key, token: bytes, instance: bytes) -> list[Key]:
        return self.table.introduced(key, token, instance)

    def remove(self, key: Key) -> None:
        if key in self.table:
            self.table.remove(key)

    def snapshot(self) -> dict[str, Any]:
        return {
            "beacon_tokens_held": self.table.tokens_held,
            "beacon_distinct_tokens": self.table.token_count,
            "beacon_store_connected": 1,
        }


def make_store(config: Any, table: MeetingTable, log: Any = None) -> MeetingStore:
    """The store ``config.store`` names: ``table`` itself wrapped (memory) or a Redis store."""
    if config.store == "memory":
        return MemoryStore(table)
    from beacon.store_redis import RedisStore  # only with the `redis` extra installed

    return RedisStore(redis_options(config), config.max_tokens_per_connection, config.max_peers_per_token, log=log)


def redis_options(config: Any) -> Any:
    from beacon.store_redis import RedisOptions

    return RedisOptions(
        url=config.store,
        password=config.store_password,
        tls=config.store_tls,
        tls_ca_file=config.store_tls_ca_file,
        tls_cert_file=config.store_tls_cert_file,
        tls_key_file=config.store_tls_key_file,
        ttl_seconds=config.store_ttl_seconds,
        start_degraded=config.store_start_degraded,
    )
