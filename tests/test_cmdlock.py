"""stemd.cmdlock.CommandLock: asyncio.Lock's FIFO semantics, plus a
try_acquire that never suspends and never jumps the queue."""

from __future__ import annotations

import asyncio

import pytest

from stemd.cmdlock import CommandLock


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_waiters_get_the_lock_in_the_order_they_asked() -> None:
    async def main() -> None:
        lock = CommandLock()
        order: list[int] = []

        async def user(i: int) -> None:
            async with lock:
                order.append(i)
                await asyncio.sleep(0)

        await asyncio.gather(*(user(i) for i in range(5)))
        assert order == [0, 1, 2, 3, 4]
        assert not lock.locked()
    run(main())


def test_try_acquire_takes_a_free_lock_and_refuses_a_held_one() -> None:
    async def main() -> None:
        lock = CommandLock()
        assert lock.try_acquire() and lock.locked()
        assert not lock.try_acquire()
        lock.release()
        assert not lock.locked()
        assert lock.try_acquire()
        lock.release()
    run(main())


def test_try_acquire_does_not_jump_a_waiter_that_was_handed_the_lock() -> None:
    """The window that asyncio.Lock leaves open: released to a waiter that
    has not run yet. The lock stays taken (handed over), so try_acquire says
    no at once instead of suspending a pass over 1,000 nodes."""
    async def main() -> None:
        lock = CommandLock()
        await lock.acquire()
        got: list[str] = []

        async def waiter() -> None:
            async with lock:
                got.append("waiter")

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # the waiter queues
        lock.release()  # handed to the waiter, which has not run yet
        assert lock.locked()
        assert not lock.try_acquire()
        await task
        assert got == ["waiter"] and not lock.locked()
    run(main())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        lock = CommandLock()
        await lock.acquire()
        task = asyncio.ensure_future(lock.acquire())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        lock.release()
        assert not lock.locked()
        assert lock.try_acquire()  # nobody left waiting
    run(main())


def test_a_waiter_cancelled_after_the_handover_passes_the_lock_on() -> None:
    async def main() -> None:
        lock = CommandLock()
        await lock.acquire()
        first = asyncio.ensure_future(lock.acquire())
        second_got: list[bool] = []

        async def second() -> None:
            async with lock:
                second_got.append(True)

        second_task = asyncio.ensure_future(second())
        await asyncio.sleep(0)
        lock.release()  # handed to `first`...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await second_task
        assert second_got == [True] and not lock.locked()
    run(main())


def test_release_of_a_free_lock_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        CommandLock().release()
