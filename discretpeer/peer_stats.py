"""What a peer counts: for apps, the CLI's ``status`` and the benchmarks."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class PeerStats:
    """Counters of what happened, for apps, the CLI's ``status`` and the benchmarks."""

    introductions: int = 0
    lan_sightings: int = 0
    punch_sessions: int = 0
    punches_confirmed: int = 0
    probes_sent: int = 0
    probes_received: int = 0
    probes_rejected: int = 0
    dials: int = 0
    dial_failures: int = 0
    relay_requests: int = 0
    relay_grants: int = 0
    relay_ends: int = 0
    relay_frames_early: int = 0  # frames of a session not granted yet, held until its grant
    relay_frames_replayed: int = 0  # of those, what its grant let in
    path_switches: int = 0
    incoming_attempts: int = 0
    verified: int = 0
    auth_failures: int = 0
    birthday_attempts: int = 0  # hard-NAT probing attempts (either side)
    birthday_hits: int = 0
    birthday_packets: int = 0  # packets sent by them: extra sockets' probes and random-port probes
    connect_times: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))
