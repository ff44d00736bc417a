"""Relay datagrams over TLS/TCP, written once per event-loop iteration: the datagrams of one
iteration go out together (one TLS write, records of up to 16 KB instead of one per datagram,
and one send), as a UDP socket takes a burst. Used by both ends of a beacon's TLS/TCP path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopBatch:
    """Bytes added during one loop iteration, handed to ``write`` joined at its end.
    ``size``: the bytes waiting (count them as unsent)."""

    __slots__ = ("_items", "_write", "size")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._items: list[bytes] = []
        self.size = 0

    def add(self, item: bytes) -> None:
        self._items.append(item)
        self.size += len(item)
        if len(self._items) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        items, self._items, self.size = self._items, [], 0
        if items:
            self._write(b"".join(items))
