"""The threads that write the rest of the cloud's large answers to Sync Edge diffs: one per edge
answering in this process, taking the answers in order after the transactions that began them
committed (see ``CloudDigest.answer_sync_diff``). No database here: a writer calls the service's
``_finish(bind, answer)``."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Any, ClassVar

from winstar_core.services import digest
from winstar_core.transport.pb import sync_pb2 as pb


class AnswerWriter:
    """The thread writing the rest of one edge's answers (``service._finish(bind, answer)``, see
    ``CloudDigest.answer_sync_diff``), in order, after the transactions that began them committed.
    One per edge that has some in this process (``_RUNNING``)."""

    _RUNNING: ClassVar[dict[uuid.UUID, AnswerWriter]] = {}
    _LOCK = threading.Lock()

    def __init__(self) -> None:
        self.queue: deque[digest.Answer] = deque()
        #: the digest, the diff part the cloud waits for after the queued answers, its first bucket
        self.expect: tuple[pb.SyncDigest, int, int] | None = None

    @classmethod
    def expects(cls, edge_id: uuid.UUID) -> tuple[pb.SyncDigest, int, int] | None:
        """The part of ``edge_id``'s diff the cloud waits for once this process's writer is done
        (None: no writer here): the digest, the part, the bucket it starts from."""
        with cls._LOCK:
            writer = cls._RUNNING.get(edge_id)
            return writer.expect if writer is not None else None

    @classmethod
    def hand_over(cls, service: Any, bind: Any, answers: list[digest.Answer], expect: Any) -> None:
        """Queue ``answers`` (begun by a transaction that just committed) on their edge's writer,
        started if it has none; ``expect``: the part awaited after them."""
        edge_id = answers[0].edge_id
        with cls._LOCK:
            writer = cls._RUNNING.get(edge_id)
            fresh = writer is None
            if writer is None:
                writer = cls._RUNNING[edge_id] = AnswerWriter()
            writer.queue.extend(answers)
            writer.expect = expect
        if fresh:
            name = f"winstar-sync-{str(edge_id)[:8]}"
            threading.Thread(target=writer.run, args=(service, bind, edge_id), name=name, daemon=True).start()

    def run(self, service: Any, bind: Any, edge_id: uuid.UUID) -> None:
        """The writer's thread: the queued answers one after the other, until none is left."""
        while True:
            with self._LOCK:
                if not self.queue:
                    del self._RUNNING[edge_id]
                    return
                answer = self.queue[0]
            done = service._finish(bind, answer)
            with self._LOCK:
                self.queue.popleft()
                if not done:  # the answers after it cannot be written in order
                    self.queue.clear()
                    self.expect = None


def answering(edge_id: uuid.UUID) -> bool:
    """Whether this process is writing an answer to ``edge_id``'s diff."""
    return AnswerWriter.expects(edge_id) is not None


def wait_for_answers(timeout: float = 60.0) -> None:
    """Wait until every answer this process is writing is complete (for tests and benchmarks:
    a large answer is written by a thread after the transaction that began it)."""
    deadline = time.monotonic() + timeout
    while AnswerWriter._RUNNING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Sync Edge answers still being written after {timeout} s")
        time.sleep(0.01)
