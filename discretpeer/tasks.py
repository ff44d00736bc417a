"""Background tasks of one owner (a peer, the CLI's expose service, the web device): referenced
until done (asyncio keeps only weak references), cancelled together when the owner closes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


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
