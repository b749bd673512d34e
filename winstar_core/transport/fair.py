"""Blocking database work of many sessions, shared fairly across tenants and their edges.

Every session of the cloud hands its database work (apply a batch, mark an ack, read the next
batch) to one :class:`FairExecutor` under the key ``(tenant, edge)``. Worker threads take jobs
round-robin: first across tenants, then across the edges of that tenant, first in, first out for
one edge. One tenant's edges, however many streams they open and however much they send, get one
turn in each round; another tenant's job waits at most for the jobs already running (each is one
message's worth of work, bounded by the limits of :mod:`winstar_core.transport.limits`).

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
    def __init__(self, workers: int = 4, name: str = "winstar-db") -> None:
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

    def _next(self) -> _Job | None:
        with self._cv:
            while not self._queues and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            tenant, edges = next(iter(self._queues.items()))
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
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            fn, args, future, loop = job
            if future.cancelled():  # the session ended while the job waited: its work stops
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)

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
