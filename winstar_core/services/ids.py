"""Ids and lists of ids: reading a UUID, and cutting a long list into one ``IN (...)`` per statement."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: values per ``IN (...)`` of one statement: a peer's batch may name 80,000 entities, and
#: PostgreSQL takes at most 65,535 parameters per statement
IN_CHUNK = 500


def parse_uuid(ref: str | uuid.UUID) -> uuid.UUID | None:
    """``ref`` as a UUID, None if it is not one (a name, say)."""
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(str(ref))
    except ValueError:
        return None


def chunks(values: Iterable[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most :data:`IN_CHUNK`, one per statement."""
    values = list(values)
    for i in range(0, len(values), IN_CHUNK):
        yield values[i : i + IN_CHUNK]
