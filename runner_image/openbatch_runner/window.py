"""A resizable in-flight window: at most `limit` requests are out at once.

A slot is held for one HTTP attempt only, never while a line waits out a backoff.
"""

import asyncio
from collections import deque


class Window:
    """Like a semaphore whose size can change while tasks wait on it (adaptive mode)."""

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle: asyncio.Event | None = None
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    async def acquire(self) -> bool:
        """Take a slot; False (and no slot) once the window is closed."""
        while self._in_flight >= self._limit and not self._closed:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        if self._closed:
            return False
        self._in_flight += 1
        return True

    def close(self) -> None:
        """Stop handing out slots and wake every waiter (a stop was requested)."""
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def release(self) -> None:
        self._in_flight -= 1
        self._wake()
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight."""
        if self._in_flight == 0:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()

    def _wake(self) -> None:
        free = self._limit - self._in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1
