"""The meeting table in Redis: several workers and machines act as one beacon.

Layout (prefix ``dp:``; one logical database, not Redis Cluster — keys are built inside the
scripts):

* ``dp:m:<node>:<conn>`` hash — one connection: instance ``i``, observed address ``o``, reported
  candidates ``c``, address share key ``p`` (:func:`beacon.limits.ip_key`). Expires after
  ``ttl`` seconds unless the worker holding the connection refreshes it: a dead worker's entries
  disappear by themselves.
* ``dp:h:<node>:<conn>`` set — the tokens it holds (for its removal); same TTL.
* ``dp:t:<token>`` sorted set — holders, scored by arrival (``dp:seq``), oldest first; a holder
  whose hash expired is dropped the next time the token is looked at.
* channel ``dp:node:<node>`` — each worker listens on its own: introductions, evictions and
  "forget" notices for the connections it holds.

``<node>`` is new at every worker start (``<machine>-w<index>-<random>`` under a supervisor,
random otherwise), so a restarted worker never mistakes a dead one's entries for its own; it removes
them at start instead (:meth:`RedisStore.claim_slot`), and a dead machine's expire with their TTL.
**Per-token rules are global**: one Lua script applies
:class:`beacon.meetings.MeetingTable`'s rules (places shared per address, newest wins within an
address, eviction of the address above its share, ``full`` otherwise, no introduction of an
instance to itself) atomically over every holder, wherever it is held.

**Local state first.** The worker keeps the truth about the connections it holds (their info,
their tokens, whom each was introduced to per token) and Redis is their published copy. Writes
go out in order through one queue, pipelined. So when Redis is lost the worker carries on with
what it knows: announces are matched against the connections it holds (a
:class:`~beacon.meetings.MeetingTable` built from its local state, same rules), it logs
``store_lost``, counts it (``beacon_store_failures``, ``beacon_store_connected`` = 0), retries
with exponential backoff (0.1 s doubling to 5 s) and, once Redis answers, publishes all its
connections and tokens again. Every introduction delivered here is remembered per
(connection, token, other connection) until one of the two lets go of the token, so the
re-publication (or anything else) never introduces a peer twice to the same partner for one
meeting.

**Relay** grants follow an introduction this worker remembers (:meth:`RedisStore.introduced`);
for a partner held by another worker the key returned is its global name ``"<node>:<conn>"``,
which the server uses to reach that worker (see :mod:`beacon.workers` for how the datagrams of a
cross-worker session travel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import ssl
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from beacon.limits import ip_key
from beacon.meetings import MAX_PEERS_PER_TOKEN_PER_IP, Announced, MeetingTable, tokens_to_add
from beacon.store import StoreHooks, StoreUnavailable
from discretpeer.proto.wire import MAPPING_DEPENDENT, MAPPING_INDEPENDENT, MAPPING_UNKNOWN, Address, Introduction

Key = Hashable
PREFIX = "dp:"
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
MAX_BATCH = 512  # operations per pipeline
MAX_QUEUED = 200_000  # writes waiting for Redis; beyond, the store counts as lost

# KEYS: none (built from the prefix: one database). ARGV: prefix, gkey, instance, ttl,
# max_per_token, max_per_ip, n_withdraw, withdraw..., add...
# Returns {full tokens}, {victim, token, ...}, {token, other, instance, observed, candidates, mapping, ...}
# (mapping: wire.MAPPING_* as a decimal string, '' when the member reported none)
ANNOUNCE_LUA = r"""
local P, me, inst, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local maxp, maxip, nw = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local mkey, hkey = P .. 'm:' .. me, P .. 'h:' .. me
local mine_info = redis.call('HMGET', mkey, 'p', 'o', 'c', 'b')
local myip = mine_info[1]
if not myip then return {{}, {}, {}} end
local mynode = string.match(me, '^(.*):')
local function hex(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function node_of(g) return string.match(g, '^(.*):') end
-- introductions and evictions for connections held by other workers are published from here,
-- in the same round trip (their worker's channel)
local function tell(g, message)
  local node = node_of(g)
  if node ~= mynode then
    message['to'] = g
    redis.call('PUBLISH', P .. 'node:' .. node, cjson.encode(message))
  end
end
for i = 8, 7 + nw do
  redis.call('ZREM', P .. 't:' .. ARGV[i], me)
  redis.call('SREM', hkey, ARGV[i])
end
local full, evicted, intros = {}, {}, {}
for i = 8 + nw, #ARGV do
  local tok = ARGV[i]
  local tkey = P .. 't:' .. tok
  if not redis.call('ZSCORE', tkey, me) then
    local holders = redis.call('ZRANGE', tkey, 0, -1)
    local live, byip, order = {}, {}, {}
    for _, h in ipairs(holders) do
      local ip = redis.call('HGET', P .. 'm:' .. h, 'p')
      if ip then
        table.insert(live, h)
        if not byip[ip] then byip[ip] = {}; table.insert(order, ip) end
        table.insert(byip[ip], h)
      else
        redis.call('ZREM', tkey, h)
      end
    end
    local victim, ok = nil, true
    local mine = byip[myip] or {}
    if #mine >= maxip then
      victim = mine[1]
    elseif #live >= maxp then
      local largest = nil
      for _, ip in ipairs(order) do
        if largest == nil or #byip[ip] > #largest then largest = byip[ip] end
      end
      if #largest > #mine + 1 then victim = largest[1] else ok = false end
    end
    if not ok then
      table.insert(full, tok)
    else
      if victim then
        redis.call('ZREM', tkey, victim)
        redis.call('SREM', P .. 'h:' .. victim, tok)
        table.insert(evicted, victim)
        table.insert(evicted, tok)
        tell(victim, {k = 'evicted', tok = hex(tok)})
      end
      for _, h in ipairs(live) do
        if h ~= victim then
          local info = redis.call('HMGET', P .. 'm:' .. h, 'i', 'o', 'c', 'b')
          if info[1] and info[1] ~= inst then
            table.insert(intros, tok)
            table.insert(intros, h)
            table.insert(intros, info[1])
            table.insert(intros, info[2])
            table.insert(intros, info[3])
            table.insert(intros, info[4] or '')
            tell(h, {k = 'intro', from = me, tok = hex(tok), inst = hex(inst), obs = mine_info[2],
                     cand = mine_info[3] or '', map = mine_info[4] or ''})
          end
        end
      end
      redis.call('ZADD', tkey, redis.call('INCR', P .. 'seq'), me)
      redis.call('EXPIRE', tkey, ttl)
      redis.call('SADD', hkey, tok)
    end
  end
end
redis.call('EXPIRE', hkey, ttl)
return {full, evicted, intros}
"""

# ARGV: prefix, gkey
REMOVE_LUA = r"""
local P, me = ARGV[1], ARGV[2]
local hkey = P .. 'h:' .. me
for _, tok in ipairs(redis.call('SMEMBERS', hkey)) do
  redis.call('ZREM', P .. 't:' .. tok, me)
end
redis.call('DEL', hkey, P .. 'm:' .. me)
return 1
"""


@dataclass
class _Local:
    instance: bytes
    observed: Address
    candidates: tuple[Address, ...] = ()
    mapping: int | None = None  # its NAT's mapping as it reported it (wire.MAPPING_*)
    tokens: dict[bytes, None] = field(default_factory=dict)
    # token → other connection (local key or "<node>:<conn>") → its instance, oldest first
    met: dict[bytes, dict[Key, bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class RedisOptions:
    url: str
    password: str = ""
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""  # a client certificate, for a store that asks for one
    tls_key_file: str = ""
    ttl_seconds: int = 30
    start_degraded: bool = False


def _encode_address(address: Address) -> str:
    return f"{address.host}|{address.port}"


def _decode_address(text: bytes | str) -> Address:
    if isinstance(text, bytes):
        text = text.decode()
    host, _, port = text.rpartition("|")
    return Address(host, int(port))


def _encode_candidates(candidates: tuple[Address, ...]) -> str:
    return ",".join(_encode_address(c) for c in candidates)


def _decode_candidates(text: bytes | str | None) -> tuple[Address, ...]:
    if not text:
        return ()
    if isinstance(text, bytes):
        text = text.decode()
    return tuple(_decode_address(part) for part in text.split(","))


class RedisStore:
    """The shared meeting table (see the module docstring). One per worker process."""

    shared = True

    def __init__(
        self,
        options: RedisOptions,
        max_tokens_per_connection: int,
        max_peers_per_token: int,
        *,
        log: Any = None,
        node: str | None = None,
    ) -> None:
        self.options = options
        self.max_tokens_per_connection = max_tokens_per_connection
        self.max_peers_per_token = max_peers_per_token
        self.max_peers_per_token_per_ip = max(2, MAX_PEERS_PER_TOKEN_PER_IP)
        self.node = node or os.urandom(6).hex()
        self._slot = ""
        self.log = log
        self._hooks: StoreHooks | None = None
        self._local: dict[Key, _Local] = {}
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = asyncio.Event()
        self._redis: Any = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._run_id: str | None = None
        self._announce_sha = self._remove_sha = ""
        self._degraded_table: MeetingTable | None = None
        self.failures = 0
        self.republished = 0
        self.remote_introductions = 0
        self._stopping = False

    # --- life ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        url, kwargs = connection_arguments(self.options)
        # no silent retries: a lost connection must be seen (this store re-publishes after it)
        kwargs.update(socket_connect_timeout=2.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 0))
        return aioredis.from_url(url, **kwargs)

    async def start(self, hooks: StoreHooks) -> None:
        """Connect, load the scripts, subscribe. Raises :class:`StoreUnavailable` (one line naming
        the URL) unless ``start_degraded``: then it serves its own connections and keeps trying."""
        self._hooks = hooks
        loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except Exception as exc:  # noqa: BLE001 - any failure to reach it means the same here
            await self._close_client()
            if not self.options.start_degraded:
                raise StoreUnavailable(unreachable(self.options, exc)) from None
            self._lost(exc)
        else:
            self._connected = True
            with contextlib.suppress(Exception):  # a cleanup: the TTL does it anyway
                await self._purge_predecessors()
        self._tasks += [loop.create_task(self._writer()), loop.create_task(self._refresher())]

    def claim_slot(self, slot: str) -> None:
        """This store serves worker slot ``slot`` (``"<machine>-w<index>"``, from the supervisor):
        at start it removes what a previous worker of that slot left (killed: nobody removed its
        connections; they would otherwise be introduced until their TTL ran out)."""
        self._slot = slot
        self.node = f"{slot}-{os.urandom(4).hex()}"

    async def _purge_predecessors(self) -> None:
        if not self._slot:
            return
        stale: set[str] = set()
        for kind in ("m", "h"):
            async for raw in self._redis.scan_iter(match=f"{PREFIX}{kind}:{self._slot}-*", count=1000):
                gkey = (raw.decode() if isinstance(raw, bytes) else raw)[len(PREFIX) + 2 :]
                if gkey.rpartition(":")[0] != self.node:
                    stale.add(gkey)
        if stale:
            async with self._redis.pipeline(transaction=False) as pipe:
                for gkey in stale:
                    pipe.evalsha(self._remove_sha, 0, PREFIX, gkey)
                await pipe.execute()
            if self.log is not None:
                self.log.info("store_purged_predecessor", slot=self._slot, connections=len(stale))

    async def _connect(self) -> None:
        await self._close_client()
        self._redis = self._client()
        await self._redis.ping()
        self._announce_sha = await self._redis.script_load(ANNOUNCE_LUA)
        self._remove_sha = await self._redis.script_load(REMOVE_LUA)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(f"{PREFIX}node:{self.node}")
        self._run_id = (await self._redis.info("server")).get("run_id")
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._listener(self._pubsub)))

    async def _close_client(self) -> None:
        pubsub, client = self._pubsub, self._redis
        self._pubsub = self._redis = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self._tasks = []
        if self._connected and self._redis is not None:
            # leave the shared table now rather than after the TTL
            with contextlib.suppress(Exception):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in self._local:
                        pipe.evalsha(self._remove_sha, 0, PREFIX, self._gkey(key))
                    await pipe.execute()
        await self._close_client()

    @property
    def connected(self) -> bool:
        return self._connected

    # --- the interface the server calls -------------------------------------------------------

    def _gkey(self, key: Key) -> str:
        return f"{self.node}:{key}"

    def gkey(self, key: Key) -> str:
        """The name other workers know a connection held here by: ``"<node>:<conn>"``."""
        return f"{self.node}:{key}"

    def send(self, to: str, message: dict[str, Any]) -> None:
        """Deliver ``message`` to the worker holding ``to`` (``"<node>:<conn>"``, or
        ``"<node>:"`` for the worker itself): ``hooks.relay_message`` there. Lost while Redis is."""
        node = to.rpartition(":")[0]
        if node == self.node:
            asyncio.get_running_loop().call_soon(self._on_message, {**message, "to": to})
        else:
            self._push(("publish", to, message))

    def join(self, key: Key, instance: bytes, observed: Address) -> None:
        local = self._local.get(key)
        if local is None:
            local = self._local[key] = _Local(instance, observed)
        else:
            local.instance, local.observed = instance, observed
        if self._degraded_table is not None:
            self._degraded_table.join(key, instance, observed)
        self._push(("join", key))

    def set_mapping(self, key: Key, mapping: int) -> None:
        local = self._local.get(key)
        if local is not None:
            local.mapping = mapping  # written with its next announce
        if self._degraded_table is not None:
            self._degraded_table.set_mapping(key, mapping)

    def announce(
        self,
        key: Key,
        add: Iterable[bytes] = (),
        withdraw: Iterable[bytes] = (),
        candidates: tuple[Address, ...] | None = None,
    ) -> Announced | None:
        local = self._local[key]
        withdraw_set = set(withdraw) & set(local.tokens)
        new = tokens_to_add(local.tokens, add, withdraw_set, self.max_tokens_per_connection)
        for token in withdraw_set:
            self._unhold(key, local, token)
        if candidates is not None and tuple(candidates) != local.candidates:
            local.candidates = tuple(candidates)
            self._reintroduce(key, local)
        for token in new:
            local.tokens[token] = None
        if self._degraded_table is not None:
            result = self._degraded_table.announce(key, new, withdraw_set, candidates)
            return self._apply_local(key, result)
        self._push(("announce", key, list(withdraw_set), new, candidates is not None))
        return None

    def _reintroduce(self, key: Key, local: _Local) -> None:
        """``key`` reported new addresses: introduce it again to those it met (as the in-memory
        table does), here directly, on other workers by a message they accept only from a
        connection they were introduced to."""
        assert self._hooks is not None
        for token, met in local.met.items():
            intro = Introduction(token, local.instance, local.observed, local.candidates, local.mapping)
            for other in met:
                if other in self._local:
                    self._hooks.introduce(other, intro)
                elif isinstance(other, str):
                    message = {"k": "update", "from": self._gkey(key), **_intro_to_json(intro)}
                    self._push(("publish", other, message))

    def introduced(self, key: Key, token: bytes, instance: bytes) -> list[Key]:
        local = self._local.get(key)
        if local is None:
            return []
        return [other for other, claimed in local.met.get(token, {}).items() if claimed == instance]

    def remove(self, key: Key) -> None:
        local = self._local.pop(key, None)
        if local is None:
            return
        for token in list(local.tokens):
            self._unhold(key, local, token)
        if self._degraded_table is not None and key in self._degraded_table:
            self._degraded_table.remove(key)
        self._push(("remove", key))

    def snapshot(self) -> dict[str, Any]:
        return {
            "beacon_tokens_held": sum(len(local.tokens) for local in self._local.values()),
            "beacon_distinct_tokens": len({t for local in self._local.values() for t in local.tokens}),
            "beacon_store_connected": 1 if self._connected else 0,
            "beacon_store_failures": self.failures,
        }

    def holders(self, token: bytes) -> list[Key]:
        """The connections held here that hold ``token`` (tests, inspection)."""
        return [key for key, local in self._local.items() if token in local.tokens]

    # --- local bookkeeping --------------------------------------------------------------------

    def _unhold(self, key: Key, local: _Local, token: bytes) -> None:
        """``key`` let go of ``token``: forget its introductions on it, on both sides."""
        local.tokens.pop(token, None)
        for other in local.met.pop(token, {}):
            other_local = self._local.get(other)
            if other_local is not None:
                met = other_local.met.get(token)
                if met is not None:
                    met.pop(key, None)
            elif isinstance(other, str):
                self._push(("publish", other, {"k": "forget", "tok": token.hex(), "from": self._gkey(key)}))

    def _remember(self, key: Key, token: bytes, other: Key, instance: bytes) -> bool:
        """Record that ``key`` is introduced to ``other`` on ``token``; False if it already was."""
        local = self._local.get(key)
        if local is None or token not in local.tokens:
            return False
        met = local.met.setdefault(token, {})
        if other in met:
            return False
        met[other] = instance
        return True

    def _local_key(self, gkey: str) -> Key | None:
        """The local key of a global name held by this worker, else None."""
        node, _, conn = gkey.rpartition(":")
        if node != self.node:
            return None
        for key in (conn, _int_or_none(conn)):
            if key is not None and key in self._local:
                return key
        return None

    def _apply_local(self, key: Key, result: Announced, table: MeetingTable | None = None) -> Announced:
        """A result of the degraded (local) table: keep only what was not already delivered."""
        table = table or self._degraded_table
        assert table is not None
        introductions = []
        for target, intro in result.introductions:
            others = table.introduced(target, intro.token, intro.instance)
            fresh = [o for o in others if self._remember(target, intro.token, o, intro.instance)]
            if fresh:
                introductions.append((target, intro))
        for token in result.full:
            self._local[key].tokens.pop(token, None)
        for victim, token in result.evicted:
            victim_local = self._local.get(victim)
            if victim_local is not None:
                self._unhold(victim, victim_local, token)
        return Announced(introductions, result.full, result.evicted)

    # --- writes to Redis, in order ------------------------------------------------------------

    def _push(self, op: tuple[Any, ...]) -> None:
        if self._connected:
            if len(self._queue) >= MAX_QUEUED:
                # Redis answers too slowly to keep up: the same as lost (local service, re-publish later)
                self._lost(RuntimeError(f"{len(self._queue)} writes waiting for the store"))
                return
            self._queue.append(op)
            self._wake.set()

    async def _writer(self) -> None:
        # redis-py may swallow a cancellation inside a pipeline: the loop checks _stopping too
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._connected:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                try:
                    await self._execute(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a lost Redis, whatever the exception type
                    self._lost(exc)
                    break

    async def _execute(self, batch: list[tuple[Any, ...]]) -> None:
        ttl = self.options.ttl_seconds
        plan: list[tuple[Any, ...]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in batch:
                kind = op[0]
                if kind == "join":
                    local = self._local.get(op[1])
                    if local is None:
                        continue
                    self._queue_join(pipe, op[1], local, ttl)
                elif kind == "announce":
                    _, key, withdraw, new, with_candidates = op
                    local = self._local.get(key)
                    if local is None:
                        continue
                    if with_candidates:
                        pipe.hset(f"{PREFIX}m:{self._gkey(key)}", "c", _encode_candidates(local.candidates))
                    if local.mapping is not None:
                        pipe.hset(f"{PREFIX}m:{self._gkey(key)}", "b", str(local.mapping))
                    new = [t for t in new if t in local.tokens]  # withdrawn meanwhile: skip
                    self._queue_announce(pipe, key, local, withdraw, new)
                    plan.append((len(pipe), key, local, new))
                elif kind == "remove":
                    pipe.evalsha(self._remove_sha, 0, PREFIX, self._gkey(op[1]))
                elif kind == "publish":
                    pipe.publish(f"{PREFIX}node:{op[1].rpartition(':')[0]}", json.dumps({**op[2], "to": op[1]}))
            if not len(pipe):
                return
            results = await pipe.execute()
        for index, key, local, new in plan:
            self._announced(key, local, new, results[index - 1])

    def _queue_join(self, pipe: Any, key: Key, local: _Local, ttl: int) -> None:
        mkey = f"{PREFIX}m:{self._gkey(key)}"
        pipe.hset(
            mkey,
            mapping={
                "i": local.instance,
                "o": _encode_address(local.observed),
                "c": _encode_candidates(local.candidates),
                "p": ip_key(local.observed.host),
            },
        )
        pipe.expire(mkey, ttl)

    def _queue_announce(self, pipe: Any, key: Key, local: _Local, withdraw: list[bytes], new: list[bytes]) -> None:
        args = [
            PREFIX,
            self._gkey(key),
            local.instance,
            self.options.ttl_seconds,
            self.max_peers_per_token,
            self.max_peers_per_token_per_ip,
            len(withdraw),
            *withdraw,
            *new,
        ]
        pipe.evalsha(self._announce_sha, 0, *args)

    def _announced(self, key: Key, local: _Local, new: list[bytes], reply: Any) -> None:
        """The script's decision for one announce: deliver here, publish to the other workers."""
        assert self._hooks is not None
        full_raw, evicted_raw, intros_raw = reply
        full = [bytes(t) for t in full_raw]
        live = self._local.get(key) is local
        for token in full:
            local.tokens.pop(token, None)
        introductions: list[tuple[Key, Introduction]] = []
        for i in range(0, len(intros_raw), 6):
            token, other, instance, observed, candidates, mapping = intros_raw[i : i + 6]
            token, other_g = bytes(token), other.decode() if isinstance(other, bytes) else other
            other_key = self._local_key(other_g)
            if other_key is None and other_g.rpartition(":")[0] == self.node:
                continue  # held here and gone meanwhile (its removal is on its way)
            other_ref: Key = other_key if other_key is not None else other_g
            if live and self._remember(key, token, other_ref, bytes(instance)):
                intro = Introduction(
                    token, bytes(instance), _decode_address(observed), _decode_candidates(candidates), _mapping(mapping)
                )
                introductions.append((key, intro))
            # a connection held by another worker: the script published its introduction there
            if other_key is not None and live and self._remember(other_key, token, key, local.instance):
                intro = Introduction(token, local.instance, local.observed, local.candidates, local.mapping)
                introductions.append((other_key, intro))
        evicted: list[tuple[Key, bytes]] = []
        for i in range(0, len(evicted_raw), 2):
            victim_g = evicted_raw[i].decode() if isinstance(evicted_raw[i], bytes) else evicted_raw[i]
            token = bytes(evicted_raw[i + 1])
            victim = self._local_key(victim_g)
            if victim is not None:
                victim_local = self._local[victim]
                self._unhold(victim, victim_local, token)
                evicted.append((victim, token))
            # else: the script told the victim's worker
        self._hooks.announced(key, Announced(introductions, full if live else [], evicted))

    # --- messages from the other workers ------------------------------------------------------

    async def _listener(self, pubsub: Any) -> None:
        try:
            while not self._stopping:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    self._on_message(json.loads(message["data"]))
                except (ValueError, KeyError, TypeError) as exc:
                    if self.log is not None:
                        self.log.warning("store_bad_message", error=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing store call must not end the worker: logged, retried
            if pubsub is self._pubsub:
                self._lost(exc)

    def _on_message(self, message: dict[str, Any]) -> None:
        assert self._hooks is not None
        key = self._local_key(message["to"])
        kind = message["k"]
        if kind.startswith("relay_"):
            relay_message = getattr(self._hooks, "relay_message", None)
            if relay_message is not None:
                relay_message(key, message)
            return
        if key is None:
            return
        if kind == "intro":
            intro = _intro_from_json(message)
            if self._remember(key, intro.token, message["from"], intro.instance):
                self.remote_introductions += 1
                self._hooks.introduce(key, intro)
        elif kind == "update":
            intro = _intro_from_json(message)
            partners = self._local[key].met.get(intro.token, {})
            if partners.get(message["from"]) == intro.instance:  # only from one it was introduced to
                self._hooks.introduce(key, intro)
        elif kind == "evicted":
            token = bytes.fromhex(message["tok"])
            local = self._local[key]
            if token in local.tokens:
                self._unhold(key, local, token)
                self._hooks.evicted(key, token)
        elif kind == "forget":
            met = self._local[key].met.get(bytes.fromhex(message["tok"]))
            if met is not None:
                met.pop(message["from"], None)

    # --- faults -------------------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if not self._connected and self._degraded_table is not None:
            return
        self._connected = False
        self._queue.clear()
        self.failures += 1
        if self.log is not None:
            self.log.warning("store_lost", url=shown_url(self.options.url), error=_reason(exc, self.options))
        # match among the connections held here until Redis is back (same rules)
        table = MeetingTable(self.max_tokens_per_connection, self.max_peers_per_token)
        for key, local in self._local.items():
            table.join(key, local.instance, local.observed)
        for key, local in self._local.items():
            result = table.announce(key, list(local.tokens), (), local.candidates)
            self._deliver_local(key, result, table)
        self._degraded_table = table
        if not self._stopping:
            with contextlib.suppress(RuntimeError):
                self._tasks.append(asyncio.get_running_loop().create_task(self._reconnect()))

    def _deliver_local(self, key: Key, result: Announced, table: MeetingTable) -> None:
        if self._hooks is not None:
            filtered = self._apply_local(key, result, table)
            if filtered.introductions or filtered.evicted:
                self._hooks.announced(key, Announced(filtered.introductions, [], filtered.evicted))

    async def _reconnect(self) -> None:
        delay = RECONNECT_MIN
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - still away: try again later
                await self._close_client()
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self._republish()
            if self.log is not None:
                self.log.info("store_back", url=shown_url(self.options.url), connections=len(self._local))
            return

    def _republish(self) -> None:
        """Publish every connection held here and its tokens again (Redis may have lost them):
        queued in one go, before anything that happens next, and written in order. The script
        skips what Redis still has; introductions already delivered are not repeated."""
        self._connected = True
        self._degraded_table = None
        self.republished += 1
        self._queue.clear()
        for key, local in self._local.items():
            self._queue.append(("join", key))
            self._queue.append(("announce", key, [], list(local.tokens), True))
        self._wake.set()

    async def _refresher(self) -> None:
        """Keep this worker's entries alive: a dead worker's expire after ``ttl`` seconds."""
        period = max(1.0, self.options.ttl_seconds / 3)
        while not self._stopping:
            await asyncio.sleep(period)
            if not self._connected or self._redis is None:
                continue
            ttl = self.options.ttl_seconds
            try:
                run_id = (await self._redis.info("server")).get("run_id")
                if run_id != self._run_id:  # restarted between two of our commands: it forgot us
                    self._run_id = run_id
                    if self.log is not None:
                        self.log.warning("store_restarted", url=shown_url(self.options.url))
                    self.failures += 1
                    self._republish()
                    continue
                items = list(self._local.items())
                for start in range(0, len(items), MAX_BATCH * 4):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key, local in items[start : start + MAX_BATCH * 4]:
                            g = self._gkey(key)
                            pipe.expire(f"{PREFIX}m:{g}", ttl)
                            pipe.expire(f"{PREFIX}h:{g}", ttl)
                            for token in local.tokens:
                                pipe.expire(PREFIX.encode() + b"t:" + token, ttl)
                        await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing store call must not end the worker: logged, retried
                self._lost(exc)


def check_reachable(options: RedisOptions) -> None:
    """Raise :class:`StoreUnavailable` (one line naming the URL) unless the store answers a PING
    (the supervisor asks once before starting workers that would each fail)."""
    import redis

    try:
        url, kwargs = connection_arguments(options)
        client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0, **kwargs)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure to reach it means the same here
        raise StoreUnavailable(unreachable(options, exc)) from None


def _intro_to_json(intro: Introduction) -> dict[str, str]:
    return {
        "tok": intro.token.hex(),
        "inst": intro.instance.hex(),
        "obs": _encode_address(intro.observed),
        "cand": _encode_candidates(intro.candidates),
        "map": "" if intro.mapping is None else str(intro.mapping),
    }


def _intro_from_json(message: dict[str, Any]) -> Introduction:
    return Introduction(
        bytes.fromhex(message["tok"]),
        bytes.fromhex(message["inst"]),
        _decode_address(message["obs"]),
        _decode_candidates(message["cand"]),
        _mapping(message.get("map", "")),
    )


def _mapping(raw: Any) -> int | None:
    """A mapping field as Redis or a worker's message carries it; None when absent or not one
    of the known values (a member hash is written only by our workers, but never trusted)."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    known = {str(m): m for m in (MAPPING_UNKNOWN, MAPPING_INDEPENDENT, MAPPING_DEPENDENT)}
    return known.get(text)


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# --- TLS, URLs, errors --------------------------------------------------------------------------

_TLS_SCHEMES = ("rediss", "valkeys")
_TCP_SCHEMES = ("redis", "valkey", *_TLS_SCHEMES)


def uses_tls(options: RedisOptions) -> bool:
    """TLS with a ``rediss://`` (or ``valkeys://``) URL, or with ``tls`` on any TCP URL."""
    return options.tls or options.url.partition("://")[0].lower() in _TLS_SCHEMES


def connection_arguments(options: RedisOptions) -> tuple[str, dict[str, Any]]:
    """The URL and keyword arguments for redis-py's ``from_url``.

    ``valkey://``/``valkeys://`` become ``redis://``/``rediss://`` (redis-py knows only these), and
    ``tls`` turns ``redis://`` into ``rediss://`` (redis-py's ``ssl=True`` is not a ``from_url``
    argument). With TLS the store's certificate must chain to ``tls_ca_file`` (else the system's
    CAs) and name the host of the URL; TLS 1.2 at least."""
    scheme, _, rest = options.url.partition("://")
    scheme = scheme.lower()
    tls = uses_tls(options)
    if scheme in _TCP_SCHEMES:
        scheme = "rediss" if tls else "redis"
    elif tls:
        raise ValueError(f"TLS needs a TCP URL (rediss://host:port/db), not {scheme}://")
    kwargs: dict[str, Any] = {}
    if options.password:
        kwargs["password"] = options.password  # one in the URL wins (redis-py's rule)
    if tls:
        kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True, ssl_min_version=ssl.TLSVersion.TLSv1_2)
        if options.tls_ca_file:
            kwargs["ssl_ca_certs"] = options.tls_ca_file
        if options.tls_cert_file:
            kwargs.update(ssl_certfile=options.tls_cert_file, ssl_keyfile=options.tls_key_file)
    return f"{scheme}://{rest}", kwargs


def shown_url(url: str) -> str:
    """``url`` as logs and errors show it: without a password (``redis://:***@host``)."""
    url = re.sub(r"^([a-zA-Z]+://[^/@?#]*?:)[^/@?#]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def unreachable(options: RedisOptions, exc: BaseException) -> str:
    """The one line that says why the store at ``options.url`` cannot be used."""
    return f"cannot reach the store {shown_url(options.url)}: {_reason(exc, options)}"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reason(exc: BaseException, options: RedisOptions) -> str:
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    tls = uses_tls(options)
    failure = _ssl_error(exc)
    if isinstance(failure, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in reason:
        detail = getattr(failure, "verify_message", "") or "certificate verify failed"
        against = (
            f"store_tls_ca_file {options.tls_ca_file}"
            if options.tls_ca_file
            else "the system's CAs; store_tls_ca_file names another CA"
        )
        return f"its TLS certificate was not trusted: {detail} (checked against {against})"
    closed = "reset by peer" in reason or "closed by server" in reason or isinstance(failure, ssl.SSLEOFError)
    name = (failure.reason or type(failure).__name__) if failure is not None else reason
    if tls and not options.tls_cert_file and (closed or "CERTIFICATE_REQUIRED" in name):
        # TLS 1.3: the store checks the client's certificate after the handshake, then closes
        return (
            f"{name}: does the store ask for a client certificate "
            "(store_tls_cert_file, or tls-auth-clients no in its config)?"
        )
    if tls and failure is not None:
        return f"TLS handshake failed ({name}): is it a TLS port?"
    if tls and "Timeout connecting" in reason:
        return f"{reason} (a plain-text port? then redis:// and store_tls = false)"
    if "NOAUTH" in reason or "already authenticated" in reason:
        return "it asks for a password (store_password)"
    if "username-password" in reason:
        return f"the password was refused (store_password): {reason.rstrip('.')}"
    if not tls and closed:
        return f"{reason} (a TLS port? then rediss:// or store_tls = true)"
    return reason
