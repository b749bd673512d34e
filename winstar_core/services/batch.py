"""What a receiver learns about a batch of a peer's events before applying it (:class:`BatchCache`),
so that applying the common batch costs no statement per event."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.entity_types import EntityTypeRegister
from winstar_core.services.ids import chunks
from winstar_core.services.peer import readable_states
from winstar_core.store.models import Entity


class BatchCache:
    """What a receiver learned about a batch before applying it, so that the common case costs no
    statement per event. Only ever used to skip a look-up whose answer is known; a stale entry
    costs a real query, never a wrong answer (and the database's constraints back it up).

    Built from a peer's events, so it must never fail on them: an event it cannot make sense of
    (a body that is not an EntityState, an id that is not a UUID, a name no row can hold) is left
    out here, and refused with its reason when the receiver applies it."""

    def __init__(self) -> None:
        self.absent: set[uuid.UUID] = set()  # ids known not to exist when the batch began
        #: the entities that did exist, held so that the session's identity map (which keeps only
        #: weak references) answers the apply's own look-ups without a statement
        self.loaded: dict[uuid.UUID, Any] = {}
        self.taken: dict[tuple[str, str], uuid.UUID] = {}  # (type, name) -> id holding it
        #: the (type, name) pairs whose holder is known: in ``taken``, or free when the batch began
        self.names: set[tuple[str, str]] = set()
        #: cloud: for the batch's edge's own entities in ``loaded``, the edges each is effectively
        #: assigned to (an entry is dropped when the transaction changes its assignments)
        self.edges_of: dict[uuid.UUID, set[uuid.UUID]] = {}
        #: edge: for the entities the batch removes, the first PENDING uplink seq of each (an
        #: entity of ``unacked_known`` missing here had none when the batch began)
        self.unacked: dict[uuid.UUID, int] = {}
        self.unacked_known: set[uuid.UUID] = set()

    @classmethod
    def for_events(
        cls,
        session: Session,
        types: EntityTypeRegister,
        tenant_id: uuid.UUID | None,
        events: list[Any],
        also: Iterable[uuid.UUID] = (),
    ) -> BatchCache:
        """The cache for a batch: the entities its ADDED/UPDATED events name (and the ids
        ``also``), and who holds their names."""
        states = readable_states(types, events)
        cache = cls()
        ids = {uuid.UUID(s.id) for s in states} | set(also)
        names: dict[str, set[str]] = {}
        for s in states:
            names.setdefault(s.type, set()).add(s.name)
        cache.load(session, tenant_id, ids, names)
        return cache

    def load(
        self,
        session: Session,
        tenant_id: uuid.UUID | None,
        ids: set[uuid.UUID],
        names: dict[str, set[str]],
    ) -> None:
        """Load the entities ``ids`` and the holders of ``names`` (by type), a chunk of
        :data:`IN_CHUNK` values per statement."""
        for chunk in chunks(ids):  # a batch's session is new: nothing to find in its identity map
            self.loaded.update(
                {e.id: e for e in session.scalars(sa.select(Entity).where(Entity.id.in_(chunk)))}
            )
        self.absent = ids - set(self.loaded)
        for type_name, wanted in names.items():
            for some in chunks(sorted(wanted)):
                stmt = sa.select(Entity.name, Entity.id).where(
                    Entity.type == type_name, Entity.name.in_(some)
                )
                if tenant_id is not None:
                    stmt = stmt.where(Entity.tenant_id == tenant_id)
                for name, eid in session.execute(stmt):
                    self.taken[(type_name, name)] = eid
            self.names.update((type_name, n) for n in wanted)

    def name_known(self, type_name: str, name: str) -> bool:
        """Whether :meth:`name_holder` knows who holds this name (a name no event of the batch
        carried was never looked up: ask the database)."""
        return (type_name, name) in self.names

    def name_holder(self, type_name: str, name: str) -> uuid.UUID | None:
        """The id holding a name at the start of the batch (kept up to date by the receiver's own
        inserts and renames), None if it was free. Only for a :meth:`name_known` name."""
        return self.taken.get((type_name, name))

    def took(self, type_name: str, name: str, entity_id: uuid.UUID) -> None:
        """The receiver gave ``name`` to ``entity_id`` in this batch."""
        self.taken[(type_name, name)] = entity_id
        self.names.add((type_name, name))
