"""What a failed ``connect()`` says: a report (beacons, introductions, candidates tried, probes,
the last errors) and the one-line text of the :class:`~discretpeer.errors.ConnectError`.

Mixed into :class:`~discretpeer.peer.Peer`, whose pairs, beacon clients and settings it reads.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from discretpeer.beacon_client import udp_unreachable

if TYPE_CHECKING:
    from discretpeer.beacon_client import BeaconClient, BeaconStatus
    from discretpeer.meeting_book import Meeting as _Meeting
    from discretpeer.pairs import Pair


class FailureReport:
    _pairs: collections.OrderedDict[tuple[bytes, bytes], Pair]
    _clients: list[BeaconClient]
    _lan_enabled: bool

    @property
    def beacon_status(self) -> list[BeaconStatus]:
        return [client.status for client in self._clients]

    def _report(self, meeting: _Meeting) -> dict[str, object]:
        pairs = [pair for (meeting_id, _), pair in self._pairs.items() if meeting_id == meeting.id]
        return {
            "beacons": [
                {
                    "beacon": status.beacon,
                    "state": status.state,
                    "observed": str(status.observed) if status.observed else None,
                    "last_error": status.last_error,
                    "transport": status.transport,
                }
                for status in self.beacon_status
            ],
            "introductions": meeting.introductions,
            "candidates": [
                {
                    "address": f"{c.address[0]}:{c.address[1]}",
                    "kind": c.kind.value,
                    "probes_sent": c.probes_sent,
                    "confirmed": c.confirmed_at is not None,
                }
                for pair in pairs
                for c in pair.session.candidates.values()
            ],
            "probes_sent": sum(pair.session.stats.probes_sent for pair in pairs),
            "probes_received": sum(
                pair.session.stats.pings_received + pair.session.stats.pongs_received for pair in pairs
            ),
            "failures": list(meeting.failures),
            "refusals": list(meeting.refusals),
        }

    def _failure_text(self, meeting: _Meeting, timeout: float) -> str:
        report = self._report(meeting)
        beacons = report["beacons"]
        assert isinstance(beacons, list)
        reached = [b["beacon"] for b in beacons if b["state"] == "connected"]
        if not self._clients and not self._lan_enabled:
            where = "no beacon configured and LAN discovery off"
        elif self._clients:
            where = f"beacons reached {len(reached)}/{len(self._clients)}" + (
                "" if reached else " (" + "; ".join(f"{b['beacon']}: {b['last_error']}" for b in beacons) + ")"
            )
        else:
            where = "LAN discovery only"
        if udp_unreachable(self._clients):  # TCP (issue 14)
            where += " over TLS/TCP only (no beacon reachable over UDP: no punching, relay asked at once)"
        candidates = report["candidates"]
        assert isinstance(candidates, list)
        tried = ", ".join(
            f"{c['address']} ({c['kind']}, {c['probes_sent']} probes{', answered' if c['confirmed'] else ''})"
            for c in candidates
        )
        text = (
            f"no verified connection for this meeting within {timeout:g}s (expecting {meeting.policy.description}): "
            f"{where}; introductions {meeting.introductions}; "
            f"candidates tried: {tried or 'none'}; "
            f"probes sent {report['probes_sent']}, received {report['probes_received']}"
        )
        refusals = report["refusals"]
        if refusals:
            assert isinstance(refusals, list)
            text += "; " + "; ".join(refusals)
        failures = report["failures"]
        if failures:
            assert isinstance(failures, list)
            text += f"; last error: {failures[-1]}"
        return text
