"""The lines of an import (``winstar entity import``, services/bulk.py): JSON Lines read one at a
time (none held longer than an entity can be), in chunks, each line checked as ``entity create``
checks its input, in worker processes forked from this one when there is more than one chunk and
more than one core (checking a device's line costs two to three times what COPYing its three
rows does, and most of that is the type's own validation), else in this process.

A worker inherits the checking (the plugin's types as this process set them up) when it is
forked; it gets the raw lines of a chunk and returns the checked ones: the cleaned name, the name
scope, the id chosen for the entity, its data (as JSON text for PostgreSQL's COPY) and its
downlink body (``entity_state``, encoded). At most two chunks per worker wait to be taken, so the
file is never read far ahead of the writing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from types import SimpleNamespace
from typing import Any, NamedTuple, cast

from winstar_core.entity_types import MAX_DATA_BYTES, EntityType, EntityTypeRegister, shown
from winstar_core.errors import WinstarError
from winstar_core.services.entities import entity_state
from winstar_core.store.models import Entity

#: lines per chunk: checked together, then their names looked up and their rows written together
CHUNK_LINES = 500
#: a chunk ends early after this many bytes of lines (a file of large entities)
CHUNK_BYTES = 1024 * 1024
#: the most worker processes that check lines (one per core, up to this)
MAX_WORKERS = 8
#: the keys a line may hold
LINE_KEYS = ("name", "data")

#: the longest line an import reads: an entity's data (4 MiB) and room for its name and JSON
MAX_LINE_BYTES = MAX_DATA_BYTES + 64 * 1024


class ImportLine(NamedTuple):
    """One checked line: the entity it creates (name cleaned, data validated, name scope, the id
    chosen for it) and its downlink body (empty without edges). ``data`` is JSON text for a COPY
    (PostgreSQL), else the validated data."""

    number: int
    name: str
    scope: str
    id: uuid.UUID
    data: dict[str, Any] | str
    body: bytes


def read_json_line(raw: bytes) -> dict[str, Any] | None:
    """A line's JSON object (``{"name", "data"}``), None for a blank line; a :class:`WinstarError`
    saying what is wrong with it otherwise (not UTF-8, not JSON, not an object, another key)."""
    if len(raw) > MAX_LINE_BYTES:
        raise WinstarError(f"longer than {MAX_LINE_BYTES:,} bytes (an entity's data is at most 4 MiB)")
    try:
        # a byte-order mark (as some editors write one) opens a file, not a JSON text
        text = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise WinstarError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text, object_pairs_hook=_no_repeated_keys)
    except json.JSONDecodeError as exc:
        raise WinstarError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise WinstarError("its JSON nests too deeply to read") from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise WinstarError(f"cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(value, dict):
        raise WinstarError(f'not a JSON object ({{"name": ..., "data": {{...}}}}) but {_kind(value)}')
    unknown = sorted(k for k in value if k not in LINE_KEYS)
    if unknown:
        raise WinstarError(f'unknown key {shown(unknown[0])}: a line holds "name" and "data"')
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a repeated key would silently keep its last
    value (a name written twice, data overwritten)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise WinstarError(f"the key {shown(key)} appears twice in one object")
            seen.add(key)
    return value


def bounded_lines(source: Any) -> Iterable[bytes]:
    """The lines of a binary file, none held longer than :data:`MAX_LINE_BYTES` + 1 bytes (the
    rest of a longer line is read and dropped: the line is refused as too long, and the file is
    never held whole). Any other iterable of lines is taken as it is."""
    readline = getattr(source, "readline", None)
    if readline is None:
        yield from source
        return
    while line := readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := readline(1024 * 1024)) and not rest.endswith(b"\n"):
                pass
        yield line


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class LineCheck:
    """How one import checks its lines: in this process, or in a worker forked from it (which
    inherits this, never pickled: the type's validation runs as the plugin set it up here)."""

    prepare: Callable[[type[EntityType], str, dict[str, Any]], tuple[str, dict[str, Any], str]]
    etype: type[EntityType]
    types: EntityTypeRegister
    tenant_id: uuid.UUID
    bodies: bool  # the downlink body of each entity is wanted (there are edges)
    json_text: bool  # the data as JSON text (json.dumps, as the psycopg dialect sends it)

    def chunk(self, first: int, raws: list[bytes]) -> tuple[list[ImportLine], list[str], int]:
        """The lines ``raws`` (numbered from ``first``) checked as ``entity create`` checks its
        input: the good ones, a problem for each bad one, the number of the last line."""
        good, bad = [], []
        for number, raw in enumerate(raws, start=first):
            try:
                value = read_json_line(raw)
                if value is None:
                    continue
                name, data = value.get("name"), value.get("data", {})
                if not isinstance(name, str):
                    raise WinstarError('"name" must be a string' if "name" in value else 'no "name"')
                if not isinstance(data, dict):
                    raise WinstarError(f'"data" must be a JSON object, not {_kind(data)}')
                name, clean, scope = self.prepare(self.etype, name, data)
            except WinstarError as exc:
                bad.append(f"line {number}: {one_line(exc)}")
                continue
            entity_id, body = uuid.uuid4(), b""
            if self.bodies:  # the body `assign` writes for a fresh entity, from its row's columns
                row = SimpleNamespace(
                    id=entity_id, tenant_id=self.tenant_id, customer_id=None, type=self.etype.name,
                    name=name, data=clean, version=1, origin_edge_id=None,
                )  # fmt: skip
                body = entity_state(cast(Entity, row), self.types).SerializeToString()
            data_out = json.dumps(clean) if self.json_text else clean
            good.append(ImportLine(number, name, scope, entity_id, data_out, body))
        return good, bad, first + len(raws) - 1


#: in a worker process: the import whose lines it checks (set as it starts)
_WORKER_CHECK: LineCheck | None = None


def _start_worker(check: LineCheck) -> None:
    global _WORKER_CHECK
    _WORKER_CHECK = check
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importing process's to handle


def _check_in_worker(first: int, raws: list[bytes]) -> tuple[list[ImportLine], list[str], int]:
    assert _WORKER_CHECK is not None
    return _WORKER_CHECK.chunk(first, raws)


def worker_count() -> int:
    """How many processes to check lines in beside this one: one per core it may run on, when
    there are two or more and it may fork safely (``fork`` exists, no other thread runs: a lock
    another thread holds would stay held in the copy); else 0, the lines are checked here."""
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_WORKERS) if cores > 1 else 0


def _chunks(lines: Iterable[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """``lines`` in chunks of at most :data:`CHUNK_LINES` (or a little over :data:`CHUNK_BYTES`),
    each with the number of its first line."""
    chunk: list[bytes] = []
    size, first = 0, 1
    for line in lines:
        chunk.append(line)
        size += len(line)
        if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
            yield first, chunk
            first, chunk, size = first + len(chunk), [], 0
    if chunk:
        yield first, chunk


class Checked(NamedTuple):
    """A chunk of lines checked: the good lines, a problem for each bad one, the number of its
    last line, and how many worker processes check the import's lines (0: this process)."""

    good: list[ImportLine]
    bad: list[str]
    last: int
    workers: int


def checked_chunks(lines: Iterable[bytes], check: LineCheck) -> Generator[Checked, None, None]:
    """The chunks of ``lines`` checked by ``check``, in file order: by worker processes while the
    caller writes those already checked, when there are two chunks or more and
    :func:`worker_count` allows (the workers end with the iteration: close it); else here."""
    todo = _chunks(bounded_lines(lines))
    head = list(islice(todo, 2))
    workers = worker_count() if len(head) == 2 else 0
    if not workers:
        yield from (Checked(*check.chunk(first, raws), 0) for first, raws in chain(head, todo))
        return
    fork = multiprocessing.get_context("fork")
    # an executor, not a Pool: a worker that dies (killed, out of memory) fails the import
    # (BrokenProcessPool) instead of leaving its chunk unanswered for ever
    with ProcessPoolExecutor(workers, fork, initializer=_start_worker, initargs=(check,)) as pool:
        pending: deque[Future[tuple[list[ImportLine], list[str], int]]] = deque()
        try:
            for first, raws in chain(head, todo):
                pending.append(pool.submit(_check_in_worker, first, raws))
                if len(pending) >= 2 * workers:
                    yield Checked(*pending.popleft().result(), workers)
            while pending:
                yield Checked(*pending.popleft().result(), workers)
        finally:  # the caller stopped (a failure): the chunks not begun are dropped
            for future in pending:
                future.cancel()
