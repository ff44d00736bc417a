"""Ask a beacon's second port where our packets come from (I/O side of :mod:`discretpeer.behaviour`).

Sent from the peer's one socket: the NAT's mapping towards the beacon's main port (the Welcome's
``observed``) against the one towards its second port tells whether the NAT maps per
destination. Answers must echo an outstanding nonce and come from the address asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from discretpeer import behaviour
from discretpeer.wire import MAPPING_DEPENDENT, MAPPING_INDEPENDENT, MAPPING_UNKNOWN

Addr = tuple[str, int]
MAX_OUTSTANDING = 8
RESENDS = (0.0, 0.2, 0.4)  # three tries over 0.6 s: a lost packet costs one short wait, no more


class BehaviourProber:
    def __init__(self, sendto: Callable[[bytes, Addr], None]) -> None:
        self._sendto = sendto
        self._waiting: dict[bytes, tuple[Addr, asyncio.Future[Addr]]] = {}

    def on_datagram(self, data: bytes, source: Addr) -> bool:
        """True if ``data`` was a behaviour answer (consumed, valid or not)."""
        if not behaviour.is_behaviour(data):
            return False
        try:
            nonce, observed = behaviour.parse_answer(data)
        except behaviour.BehaviourError:
            return True
        entry = self._waiting.get(nonce)
        if entry is not None and entry[0] == source and not entry[1].done():
            entry[1].set_result(observed)
        return True

    async def observe(self, target: Addr, timeout: float = 0.6) -> Addr | None:
        """Our address as ``target`` (a beacon's behaviour port) sees it, or None (bounded)."""
        if len(self._waiting) >= MAX_OUTSTANDING:
            return None
        nonce = os.urandom(behaviour.NONCE_SIZE)
        future: asyncio.Future[Addr] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = (target, future)
        request = behaviour.request(nonce)
        try:
            waited = 0.0
            for at in RESENDS:
                await asyncio.sleep(max(0.0, at - waited))
                waited = at
                if future.done():
                    break
                self._sendto(request, target)
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), max(0.05, timeout - waited))
            return None
        finally:
            self._waiting.pop(nonce, None)


def classify(main: Addr | None, second: Addr | None) -> int:
    """MAPPING_* from our address at the beacon's main port and at its second port."""
    if main is None or second is None:
        return MAPPING_UNKNOWN
    return MAPPING_INDEPENDENT if tuple(main) == tuple(second) else MAPPING_DEPENDENT
