"""The lock a node's commands queue on (start, stop, restart, reload steps).

``asyncio.Lock`` with one addition, :meth:`CommandLock.try_acquire`: take
the lock now if it is free *and nobody waits for it*, else say no at once.
A stop of 1,000 nodes takes every free lock in one pass, with no task per
node (stemd/master.py, ``_stop_together``); with ``asyncio.Lock`` the only
way to take a lock is to await ``acquire()``, which suspends when the lock
was just released to a waiter that has not run yet, and that would hold up
the signals to every node after it until that other command is done.

Ownership is handed straight to the first waiter on release (the lock stays
locked meanwhile), so commands run in the order they asked, and a
``try_acquire`` never jumps the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class CommandLock:
    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._locked

    def try_acquire(self) -> bool:
        """Take the lock if it is free and nobody waits; never suspends."""
        if self._locked or self._waiters:
            return False
        self._locked = True
        return True

    async def acquire(self) -> bool:
        if self.try_acquire():
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed to us as we were cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        return True

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("CommandLock released while not locked")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the lock passes to it, still locked
                return
        self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
