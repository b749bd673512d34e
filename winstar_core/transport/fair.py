"""Blocking database work of many sessions, shared fairly across tenants and their edges.

Every session of the cloud hands its database work (apply a batch, mark an ack, read the next
batch) to one :class:`FairExecutor` under the key ``(tenant, edge)``. Worker threads take jobs
round-robin: first across tenants, then across the edges of that tenant, first in, first out for
one edge. One tenant's edges, however many streams they open and however much they send, get one
turn in each round, and never more than half of the workers at once: another tenant's job finds a
free worker at once unless two or more tenants are busy, and then waits at most for the jobs
already running (each is one message's worth of work, bounded by the limits of
:mod:`winstar_core.transport.limits`).

A job whose caller gave up (its session ended) before a worker reached it is dropped, so a
session's work stops with the session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class FairExecutor:
    def __init__(self, workers: int = 4, name: str = "winstar-db", per_tenant: int | None = None) -> None:
        #: the most workers one tenant may hold at once
        self.per_tenant = max(1, per_tenant if per_tenant is not None else workers // 2)
        self._running: collections.Counter[Hashable] = collections.Counter()
        #: tenant -> edge -> jobs; both levels rotate (an OrderedDict used as a ring)
        self._queues: collections.OrderedDict[
            Hashable, collections.OrderedDict[Hashable, collections.deque[_Job]]
        ]
        self._queues = collections.OrderedDict()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    async def run(self, tenant: Hashable, edge: Hashable, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a worker thread in ``(tenant, edge)``'s turn; cancelling the
        caller before it started drops the job."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the executor is shut down")
            edges = self._queues.setdefault(tenant, collections.OrderedDict())
            edges.setdefault(edge, collections.deque()).append((fn, args, future, loop))
            self._cv.notify()
        return await future

    def queued(self) -> int:
        with self._cv:
            return sum(len(q) for edges in self._queues.values() for q in edges.values())

    def _eligible(self) -> Hashable | None:
        """The first tenant in the rotation with a queued job and a worker to spare."""
        for tenant in self._queues:
            if self._running[tenant] < self.per_tenant:
                return tenant
        return None

    def _next(self) -> tuple[Hashable, _Job] | None:
        with self._cv:
            while not self._closed and (tenant := self._eligible()) is None:
                self._cv.wait()
            if self._closed:
                return None
            edges = self._queues[tenant]
            edge, jobs = next(iter(edges.items()))
            job = jobs.popleft()
            if jobs:
                edges.move_to_end(edge)
            else:
                del edges[edge]
            if edges:
                self._queues.move_to_end(tenant)
            else:
                del self._queues[tenant]
            self._running[tenant] += 1
            return tenant, job

    def _done(self, tenant: Hashable) -> None:
        with self._cv:
            self._running[tenant] -= 1
            if not self._running[tenant]:
                del self._running[tenant]
            self._cv.notify()  # the tenant may have jobs that waited for a worker of its own

    def _work(self) -> None:
        while (picked := self._next()) is not None:
            tenant, (fn, args, future, loop) = picked
            try:
                if future.cancelled():  # the session ended while the job waited: its work stops
                    continue
                try:
                    result, error = fn(*args), None
                except BaseException as exc:  # handed to the awaiting coroutine
                    result, error = None, exc
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                    loop.call_soon_threadsafe(_settle, future, result, error)
            finally:
                self._done(tenant)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            for edges in self._queues.values():
                for jobs in edges.values():
                    for _fn, _args, future, loop in jobs:
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(future.cancel)
            self._queues.clear()
            self._cv.notify_all()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
