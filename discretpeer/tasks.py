"""Background tasks of one owner (a peer, the CLI's expose service, the web device): referenced
until done (asyncio keeps only weak references), cancelled together when the owner closes; and
the two waits that must never lose a cancellation (:func:`wait_for`, :func:`cancel_and_wait`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that never loses a cancellation of the caller (TimeoutError on timeout).

    On Python 3.11 ``asyncio.wait_for`` returns the result when what it awaits finishes in the
    loop iteration in which the caller is cancelled: the cancellation is gone and the caller runs
    on (a beacon keepalive loop that then never ended held `discretpeer forward` after Ctrl-C).
    Python 3.12 rebuilt ``wait_for`` on ``asyncio.timeout``, as this is."""
    async with asyncio.timeout(timeout):
        return await awaitable


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (None entries are skipped) and wait until they have ended, whatever they
    raise. A cancellation of the caller itself still propagates, which
    ``with suppress(CancelledError): await task`` would swallow."""
    pending = {task for task in tasks if task is not None}
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


class TaskSet:
    """``log``: where a task that failed is reported (None: nowhere, its owner handles errors)."""

    def __init__(self, log: Any = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._log is not None and not task.cancelled() and task.exception() is not None:
            self._log.error("internal task failed", task=task.get_name(), error=repr(task.exception()))

    async def cancel_all(self) -> None:
        """Cancel every task and wait until they have ended."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
