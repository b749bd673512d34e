"""Many sessions' small database jobs run as one.

A fan-out wakes hundreds of sessions of a node at once, each wanting the same two things: read the
next events of its stream, and mark the batch its edge acknowledged. One transaction each costs a
connection checkout, a round trip per statement and the ORM's bookkeeping, hundreds of times over;
one transaction for all of them costs little more than one. A :class:`Gatherer` collects requests
while its previous batch runs and then runs all that waited in one call (group commit): a lone
request runs at once, without waiting for company; under load the batches grow by themselves.

A batch holds at most ``max_weight`` worth of requests (a request's weight is what its caller
says: the events it may read or mark), so one batch stays one message's worth of work and the
fair executor's turns stay short. A batch that fails fails each of its requests with the same
error; nothing a request carries can fail another's (the requests are checked by their senders
before they are gathered).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")

#: runs one batch: the requests in, one result per request out (in the same order)
RunBatch = Callable[[Sequence[Q]], Awaitable[Sequence[R]]]


class Gatherer(Generic[Q, R]):
    def __init__(self, run_batch: RunBatch[Q, R], max_weight: int = 2000) -> None:
        self._run_batch = run_batch
        self.max_weight = max_weight
        self._queue: collections.deque[tuple[Q, int, asyncio.Future[R]]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        #: batches run and requests served (for the benchmarks and the tests)
        self.batches = 0
        self.requests = 0

    async def submit(self, request: Q, weight: int = 1) -> R:
        """``request``'s result, from the next batch that runs."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((request, max(1, weight), future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Q, int, asyncio.Future[R]]]:
        taken: list[tuple[Q, int, asyncio.Future[R]]] = []
        weight = 0
        while self._queue:
            request, w, future = self._queue[0]
            if taken and weight + w > self.max_weight:
                break
            self._queue.popleft()
            if future.cancelled():  # its session ended while it waited
                continue
            taken.append((request, w, future))
            weight += w
        return taken

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = self._take()
                if not taken:
                    continue
                try:
                    results = await self._run_batch([request for request, _, _ in taken])
                except BaseException as exc:  # handed to every request of the batch
                    for _, _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                self.batches += 1
                self.requests += len(taken)
                for (_, _, future), result in zip(taken, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
            while self._queue:  # left only when cancelled (the node stops): nobody is served
                self._queue.popleft()[2].cancel()
