"""Errors raised to applications."""

from __future__ import annotations


class ConnectError(ConnectionError):
    """``Peer.connect`` gave up. ``report`` says what was tried (beacons, candidates, probes)."""

    def __init__(self, message: str, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}
