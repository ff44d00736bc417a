"""Hard-NAT (birthday) probing, sans I/O: who does what, which ports, at what pace.

When one side's NAT maps per destination ("symmetric": the port the beacon saw says nothing of
the one towards us) and the other's does not, the symmetric side opens ``SOCKETS`` extra sockets
that all send towards the other's public address (``SOCKETS`` fresh NAT mappings towards it), and
the other side probes random ports of the symmetric side's public IP. With 256 mappings open and
1,024 distinct ports probed, a hit is ~98 % likely (1 − (1 − 256/64,512)^1,024), as Tailscale
describes. Probes are the usual authenticated ones; everything is bounded in count and time.
"""

from __future__ import annotations

import random
from typing import Literal

SOCKETS = 256  # extra sockets on the symmetric side
PROBES = 1024  # probes from the other side, at most
SPRAY_SECONDS = 3.0  # over this long (paced: ~340 per second)
TICK = 0.02  # the sprayer sends what is due every tick
ATTEMPT_SECONDS = 3.5  # the extra sockets live this long after opening, without a hit
RESEND_EVERY = 1.0  # each extra socket re-sends its probe (keeps its mapping, retries a loss)
START_AFTER = 0.4  # after the introduction, if no path is confirmed by then (easy NATs need none)
SPRAY_AFTER = 0.3  # the sprayer waits this much more: the other side's sockets open first
LOW_PORT = 1024

Role = Literal["sockets", "spray"]


def role(own_varies: bool | None, other_varies: bool | None) -> Role | None:
    """``"sockets"`` for the symmetric side of a symmetric ↔ endpoint-independent pair,
    ``"spray"`` for the other; None when unknown or when both (or neither) map per destination."""
    if own_varies is None or other_varies is None or own_varies == other_varies:
        return None
    return "sockets" if own_varies else "spray"


def batches(count: int = PROBES, seconds: float = SPRAY_SECONDS, tick: float = TICK) -> list[int]:
    """How many probes to send at each tick: ``count`` spread evenly over ``seconds``."""
    ticks = max(1, round(seconds / tick))
    base, extra = divmod(count, ticks)
    return [base + (1 if i < extra else 0) for i in range(ticks)]


def random_ports(rng: random.Random, count: int = PROBES, avoid: frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct ports from 1024–65535 (where NATs allocate), none in ``avoid``."""
    free = 65536 - LOW_PORT - sum(1 for port in avoid if LOW_PORT <= port < 65536)
    picked: list[int] = []
    seen = set(avoid)
    while len(picked) < min(count, free):
        port = rng.randrange(LOW_PORT, 65536)
        if port not in seen:
            seen.add(port)
            picked.append(port)
    return picked
