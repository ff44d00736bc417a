"""The meeting table: which connection waits on which token (sans-I/O).

Plain class, fed by the server, returning the introductions to send. Keys are whatever the
server uses to name a connection. Every map is bounded: tokens per connection and connections
per token are capped, and there is one entry per connection the server admitted.

It also remembers who was introduced to whom on which token, while both still hold it: a relay
grant must follow an introduction the beacon made between those two connections
(:meth:`MeetingTable.introduced`), because instance values are only claims.

**Token slots (squatting).** A token has ``max_peers_per_token`` slots. Anyone who learned a
token (or simply holds many) could take all of them and the real peers would never meet. Slots
are therefore shared by source address (:func:`beacon.limits.ip_key`: an IPv4 address, an IPv6
/64) instead of first come, first served:

* one address holds at most ``max_peers_per_token_per_ip`` slots of a token (≥ 2, so two peers
  behind one NAT still meet). Its next connection takes the place of its own oldest holder
  (newest wins *within* an address: a peer that reconnected while its old connection lingers gets
  in at once, and an address can only ever push out itself);
* when the token is full, a newcomer whose address holds ``n`` slots takes the place of the oldest
  holder of the address holding the most slots, if that address holds more than ``n + 1``. This
  converges to a fair share per address: squatters from a few addresses lose their slots to each
  new address, and cannot win them back by re-announcing (their address is then no longer above
  anyone's share), so churning does not push a real peer out;
* only when every address already holds no more than the newcomer's ``n + 1`` (at least
  ``max_peers_per_token`` distinct addresses for a lone newcomer) is the token genuinely full. The
  newcomer is refused and told so (``full``), like everyone whose place was taken (``evicted``),
  so that a peer never waits without knowing why.

A first-come rule would let one address block a meeting for ever; plain newest-wins would let a
squatter that re-announces in a loop push real peers out before they meet. What remains: an
attacker with as many addresses (or IPv6 /64s) as a token has slots can still fill it, and is
then named in a refusal the peers see.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from beacon.limits import ip_key
from discretpeer.proto.wire import Address, Introduction

Key = Hashable
MAX_PEERS_PER_TOKEN_PER_IP = 4


class TooManyTokens(Exception):
    """The announce would leave the connection with more tokens than allowed; nothing changed."""

    def __init__(self, held: int, limit: int) -> None:
        super().__init__(f"announce would hold {held} tokens (max {limit})")
        self.held = held
        self.limit = limit


def tokens_to_add(held: Collection[bytes], add: Iterable[bytes], withdraw_set: set[bytes], cap: int) -> list[bytes]:
    """The tokens of ``add`` a connection holding ``held`` takes anew (in order, once each; one it
    is withdrawing in the same announce counts as new). Raises :class:`TooManyTokens` if it
    would then hold more than ``cap``."""
    new = [t for t in dict.fromkeys(add) if t not in held or t in withdraw_set]
    count = len(held) - len(withdraw_set) + len(new)
    if count > cap:
        raise TooManyTokens(count, cap)
    return new


@dataclass
class _Member:
    instance: bytes
    observed: Address
    ip: str = ""
    candidates: tuple[Address, ...] = ()
    mapping: int | None = None  # its NAT's mapping behaviour as it reported it (wire.MAPPING_*)
    tokens: set[bytes] = field(default_factory=set)
    # token → the connections introduced to this one on it, oldest introduction first
    met: dict[bytes, dict[Key, None]] = field(default_factory=dict)


class Announced(NamedTuple):
    introductions: list[tuple[Key, Introduction]]
    full: list[bytes]  # tokens not registered: the token's slots are taken (see the module docstring)
    evicted: list[tuple[Key, bytes]] = []  # (connection, token): its place was given to the announcer


class MeetingTable:
    """Tokens → waiting connections; introduces each newcomer to everyone already waiting."""

    def __init__(
        self,
        max_tokens_per_connection: int,
        max_peers_per_token: int,
        max_peers_per_token_per_ip: int = MAX_PEERS_PER_TOKEN_PER_IP,
    ) -> None:
        self.max_tokens_per_connection = max_tokens_per_connection
        self.max_peers_per_token = max_peers_per_token
        self.max_peers_per_token_per_ip = max(2, max_peers_per_token_per_ip)
        self._members: dict[Key, _Member] = {}
        self._tokens: dict[bytes, dict[Key, None]] = {}  # insertion-ordered set of holders
        self.tokens_held = 0
        self.evictions = 0

    def join(self, key: Key, instance: bytes, observed: Address) -> None:
        """Register a connection (after its Hello). Joining twice keeps its tokens."""
        member = self._members.get(key)
        if member is None:
            self._members[key] = _Member(instance=instance, observed=observed, ip=ip_key(observed.host))
        else:
            member.instance, member.observed, member.ip = instance, observed, ip_key(observed.host)

    def set_mapping(self, key: Key, mapping: int) -> None:
        """What the connection learned of its NAT's mapping (passed on in its introductions)."""
        member = self._members.get(key)
        if member is not None:
            member.mapping = mapping

    def announce(
        self,
        key: Key,
        add: Iterable[bytes] = (),
        withdraw: Iterable[bytes] = (),
        candidates: tuple[Address, ...] | None = None,
    ) -> Announced:
        """Withdraw, then add tokens; ``candidates`` (if not None) replaces the reported ones, and
        if they changed, everyone already introduced to ``key`` is introduced to it again.

        Raises :class:`TooManyTokens` (without changing anything) if the result would exceed the
        per-connection cap. Adding a token already held does nothing (no duplicate introduction)."""
        member = self._members[key]
        withdraw_set = set(withdraw) & member.tokens
        new = tokens_to_add(member.tokens, add, withdraw_set, self.max_tokens_per_connection)
        for token in withdraw_set:
            self._unhold(key, member, token)
        introductions: list[tuple[Key, Introduction]] = []
        if candidates is not None and tuple(candidates) != member.candidates:
            member.candidates = tuple(candidates)
            # new addresses (a port mapping granted, an interface up) after an introduction: tell
            # those it met, or a pair that met before a gateway answered would stay on the relay
            for token, met in member.met.items():
                for other_key in met:
                    introductions.append((other_key, _introduce(token, member)))
        full: list[bytes] = []
        evicted: list[tuple[Key, bytes]] = []
        for token in new:
            holders = self._tokens.get(token)
            if holders is None:
                holders = self._tokens[token] = {}
            else:
                victim = self._slot_for(member, holders)
                if victim is False:
                    full.append(token)
                    continue
                if victim is not None:
                    self._unhold(victim, self._members[victim], token)
                    self.evictions += 1
                    evicted.append((victim, token))
                    holders = self._tokens.setdefault(token, {})
            for other_key in holders:
                other = self._members[other_key]
                if other.instance == member.instance:
                    continue  # the same process on two connections: never introduce it to itself
                introductions.append((key, _introduce(token, other)))
                introductions.append((other_key, _introduce(token, member)))
                member.met.setdefault(token, {})[other_key] = None
                other.met.setdefault(token, {})[key] = None
            holders[key] = None
            member.tokens.add(token)
            self.tokens_held += 1
        return Announced(introductions, full, evicted)

    def _slot_for(self, member: _Member, holders: dict[Key, None]) -> Key | None | bool:
        """Who gives up a slot of this token to ``member``: a key, None (a slot is free) or False
        (the token is full for it). See the module docstring."""
        by_ip: dict[str, list[Key]] = {}
        for holder in holders:  # oldest first; at most max_peers_per_token of them
            by_ip.setdefault(self._members[holder].ip, []).append(holder)
        mine = by_ip.get(member.ip, [])
        if len(mine) >= self.max_peers_per_token_per_ip:
            return mine[0]
        if len(holders) < self.max_peers_per_token:
            return None
        largest = max(by_ip.values(), key=len)  # ties: the address that came first
        if len(largest) > len(mine) + 1:
            return largest[0]
        return False

    def introduced(self, key: Key, token: bytes, instance: bytes) -> list[Key]:
        """The connections introduced to ``key`` on ``token`` that claim ``instance`` (both still
        holding it), oldest introduction first."""
        member = self._members.get(key)
        if member is None:
            return []
        met = member.met.get(token, {})
        return [other for other in met if self._members[other].instance == instance]

    def remove(self, key: Key) -> list[tuple[Key, Introduction]]:
        """Forget a connection and all its tokens (no introductions result)."""
        member = self._members.pop(key, None)
        if member is not None:
            for token in list(member.tokens):
                self._unhold(key, member, token)
        return []

    def _unhold(self, key: Key, member: _Member, token: bytes) -> None:
        member.tokens.discard(token)
        for other_key in member.met.pop(token, ()):
            other = self._members.get(other_key)
            if other is not None:
                met = other.met.get(token)
                if met is not None:
                    met.pop(key, None)
                    if not met:
                        del other.met[token]
        holders = self._tokens.get(token)
        if holders is not None and holders.pop(key, 0) is None:
            self.tokens_held -= 1
            if not holders:
                del self._tokens[token]

    # --- inspection ---------------------------------------------------------------------------

    def tokens_of(self, key: Key) -> frozenset[bytes]:
        member = self._members.get(key)
        return frozenset(member.tokens) if member else frozenset()

    def holders(self, token: bytes) -> list[Key]:
        return list(self._tokens.get(token, ()))

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)

    @property
    def token_count(self) -> int:
        """Distinct tokens someone waits on."""
        return len(self._tokens)


def _introduce(token: bytes, about: _Member) -> Introduction:
    return Introduction(
        token=token,
        instance=about.instance,
        observed=about.observed,
        candidates=about.candidates,
        mapping=about.mapping,
    )
