"""The waits that must never lose a cancellation (discretpeer.tasks).

The race they close: what a task awaits finishes in the same loop iteration in which the task is
cancelled. Python 3.11's ``asyncio.wait_for`` then returns the result and the cancellation is gone
(a keepalive loop went on forever and held `discretpeer forward` after Ctrl-C, killed after 10 s)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from discretpeer.tasks import cancel_and_wait, wait_for

AFTER_THE_WAIT = 30.0  # where a task whose cancellation was lost would sit


async def cancelled_as_it_wakes(wait: Callable[[Awaitable[Any], float], Awaitable[Any]]) -> bool:
    """True when a task cancelled in the iteration its awaited event fires ends cancelled."""
    event = asyncio.Event()

    async def waiter() -> None:
        await wait(event.wait(), 10.0)
        await asyncio.sleep(AFTER_THE_WAIT)

    task = asyncio.create_task(waiter())
    for _ in range(3):
        await asyncio.sleep(0)  # the task (and wait_for's inner task) now wait on the event
    event.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    ended_cancelled = task.done() and task.cancelled()
    task.cancel()  # the lost-cancellation case: end it now
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return ended_cancelled


async def test_wait_for_keeps_a_cancellation_that_races_the_result():
    assert await cancelled_as_it_wakes(wait_for)


async def test_the_race_is_real_with_asyncio_wait_for_on_this_python():
    # the check above would pass vacuously if the race could not happen: show that it does
    # (on 3.12+ asyncio.wait_for is fixed and this is not expected to reproduce)
    import sys

    lost = not await cancelled_as_it_wakes(asyncio.wait_for)
    assert lost == (sys.version_info < (3, 12))


async def test_wait_for_returns_the_result_and_times_out():
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert await wait_for(answer(), 5.0) == 42
    assert await wait_for(answer(), None) == 42
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await wait_for(asyncio.sleep(10), 0.05)
    assert asyncio.get_running_loop().time() - started < 2.0
    with pytest.raises(TimeoutError):
        await wait_for(asyncio.sleep(10), 0)
    done = asyncio.get_running_loop().create_future()
    done.set_result("ready")
    assert await wait_for(done, 0) == "ready"  # already done: no timeout even at 0


async def test_wait_for_cancels_what_it_awaits_on_timeout():
    inner = asyncio.create_task(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await wait_for(inner, 0.02)
    await asyncio.sleep(0)
    assert inner.cancelled()


async def test_cancel_and_wait_ends_tasks_whatever_they_raise():
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.02)  # cleanup that takes a while: still waited for

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    slow = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    await cancel_and_wait(failed, None, slow)
    assert failed.done() and not failed.cancelled()  # ended on its own, its error retrieved
    assert slow.cancelled()
    await cancel_and_wait()  # nothing to do


async def test_cancel_and_wait_does_not_swallow_the_callers_cancellation():
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await release.wait()  # holds its cleanup until released

    child = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    reached_after = False

    async def closer() -> None:
        nonlocal reached_after
        await cancel_and_wait(child)
        reached_after = True

    outer = asyncio.create_task(closer())
    await asyncio.sleep(0.01)  # outer waits for the child's cleanup
    outer.cancel()
    await asyncio.wait({outer}, timeout=1.0)
    assert outer.cancelled() and not reached_after
    release.set()
    await asyncio.wait({child}, timeout=1.0)
    assert child.cancelled()
