"""The index's write lock, handed out by priority so that status changes never queue behind bulk work.

SQLite has one writer at a time. The Indexer used to take a plain FIFO lock for every write, so a
pod phase change (one short UPDATE) could wait behind a 5,000-entry catalog transaction for 10-30
seconds. Now bulk work is cut into short transactions (see ``Indexer.load_catalog``) and each
waiter says how urgent it is; when the lock is released the most urgent waiter goes next:

* :attr:`WritePriority.STATUS`: pod phase changes and deletions: what search must reflect at once;
* :attr:`WritePriority.WORKLOAD`: a workload's rows and tools (one server's worth of writes);
* :attr:`WritePriority.BULK`: one chunk of a catalog load or delete.

A waiter that has waited longer than ``max_wait`` counts as urgent itself (aging), so a steady
stream of status changes delays bulk work but can never starve it. Within one priority, first
come, first served. :meth:`WriteScheduler.exclusive` (rebuilding the file) goes before everyone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum


class WritePriority(IntEnum):
    """Lower goes first."""

    EXCLUSIVE = 0
    STATUS = 1
    WORKLOAD = 2
    BULK = 3


@dataclass
class _Waiter:
    priority: int
    seq: int
    since: float
    future: asyncio.Future[None]


class WriteScheduler:
    """An asyncio lock whose waiters are served by priority, with aging (see the module docstring)."""

    def __init__(self, *, max_wait: float = 2.0) -> None:
        self.max_wait = max_wait
        self._held = False
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        #: Called with (priority name, seconds waited) at every grant: the metrics' hook.
        self.observer: Callable[[str, float], None] | None = None

    @property
    def locked(self) -> bool:
        return self._held

    @asynccontextmanager
    async def turn(self, priority: WritePriority) -> AsyncIterator[None]:
        """Hold the write lock for one transaction."""
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """The lock before any other waiter (for replacing the index file)."""
        async with self.turn(WritePriority.EXCLUSIVE):
            yield

    async def _acquire(self, priority: WritePriority) -> None:
        started = time.monotonic()
        if not self._held and not self._waiters:
            self._held = True
            self._observe(priority, 0.0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(int(priority), next(self._seq), started, future)
        self._waiters.append(waiter)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted, then cancelled before it could run: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        self._observe(priority, time.monotonic() - started)

    def _release(self) -> None:
        self._held = False
        while self._waiters:
            waiter = self._next()
            if not waiter.future.done():
                self._held = True
                waiter.future.set_result(None)
                return

    def _next(self) -> _Waiter:
        """The most urgent waiter; one that waited past ``max_wait`` counts as STATUS (aging)."""
        now = time.monotonic()

        def urgency(w: _Waiter) -> tuple[int, int]:
            overdue = now - w.since > self.max_wait
            return (min(w.priority, WritePriority.STATUS) if overdue else w.priority), w.seq

        best = min(self._waiters, key=urgency)
        self._waiters.remove(best)
        return best

    def _observe(self, priority: WritePriority, waited: float) -> None:
        if self.observer is not None:
            self.observer(priority.name.lower(), waited)
