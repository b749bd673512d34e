"""What a peer sends: every way it can be wrong is a :class:`WinstarError` with a one-line reason.

Reading an event's body, the ids it carries, and (for a batch's look-ups) the entity states fit
to look up. Used by both receivers: the cloud applying uplinks, the edge applying downlinks.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from winstar_core.entity_types import EntityTypeRegister, shown
from winstar_core.errors import WinstarError
from winstar_core.services.constants import ADDED, UPDATED
from winstar_core.services.ids import parse_uuid
from winstar_core.services.names import name_problem
from winstar_core.transport.pb import sync_pb2 as pb

M = TypeVar("M", bound=Message)

#: the ids a peer usually sends ("urn:uuid:" and braces around 36 characters at most) are
#: cached; a longer text (``uuid.UUID`` takes any number of dashes) is read without the cache
_UUID_TEXT_MAX = 47


def parse_body(kind: type[M], body: bytes) -> M:
    """An event's ``body`` read as the protobuf message ``kind``. A peer's garbage is refused
    with the message's name, not a DecodeError."""
    try:
        return kind.FromString(body)
    except (DecodeError, ValueError, TypeError, RecursionError) as exc:
        detail = str(exc).rsplit(": ", 1)[-1].strip() or type(exc).__name__
        raise WinstarError(
            f"the event's body is not a valid {kind.DESCRIPTOR.name} ({' '.join(detail.split())})"
        ) from None


@functools.lru_cache(maxsize=4096)
def _read_uuid(raw: str) -> uuid.UUID | None:
    """A peer's id read once: a batch names its tenant, its edge and each entity (in the event and
    in its body) again and again, and a UUID object is immutable, so sharing one is safe."""
    return parse_uuid(raw)


def peer_uuid(raw: str, what: str) -> uuid.UUID:
    """``raw``, an id a peer sent, as a UUID; an empty or malformed one is refused, naming
    ``what`` it was ("the membership's container id")."""
    uid = (_read_uuid(raw) if len(raw) <= _UUID_TEXT_MAX else parse_uuid(raw)) if raw else None
    if uid is None:
        raise WinstarError(f"{what} {shown(raw)} is not a UUID" if raw else f"{what} is empty")
    return uid


def optional_peer_uuid(raw: str, what: str) -> uuid.UUID | None:
    """As :func:`peer_uuid`, the empty string meaning "none" (a customer id, say)."""
    return peer_uuid(raw, what) if raw else None


def event_entity_id(event: pb.Event) -> uuid.UUID:
    """The id of the entity an event is about."""
    if not event.entity_id:
        raise WinstarError("the event names no entity")
    return peer_uuid(event.entity_id, "the event's entity id")


def readable_states(types: EntityTypeRegister, events: Iterable[Any]) -> list[pb.EntityState]:
    """The EntityState bodies of the ADDED/UPDATED events of ``events`` that are fit to look up:
    of a known type (the event's own), with a UUID for id and a name a row could hold. The others
    are skipped: their apply refuses them, one by one, with the reason."""
    out: list[pb.EntityState] = []
    for e in events:
        if e.action not in (ADDED, UPDATED) or e.type not in types:
            continue
        try:
            state = pb.EntityState.FromString(e.body)
        except (DecodeError, ValueError, TypeError, RecursionError):
            continue
        if state.type != e.type or not state.id or parse_uuid(state.id) is None:
            continue
        if name_problem(state.name, "") is not None:
            continue
        out.append(state)
    return out
