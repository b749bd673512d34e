"""The state every part of :class:`~winstar_core.services.cloud.CloudService` shares: the
transaction's session, the platform (entity types, plugin hooks), the outbox its changes write
to, and what the transaction remembers between calls (rows held, fresh entities, the batch's
look-ups)."""

from __future__ import annotations

import functools
import uuid
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from winstar_core.plugin.manager import Platform
from winstar_core.services.batch import BatchCache
from winstar_core.services.config import get_config
from winstar_core.services.entities import EntityStore
from winstar_core.store.outbox import Outbox

T = TypeVar("T")


class CloudBase:
    """The cloud service's state, for one transaction.

    - ``session``: the caller's transaction; every part reads and writes through it;
    - ``platform``, ``types``: the plugin manager and its entity types;
    - ``entities``: the :class:`EntityStore` (entity look-ups and plain writes);
    - ``outbox``: the ``edge_event`` rows the transaction's changes imply, flushed before commit;
    - ``_no_echo``, ``_fresh``, ``_created_by_edge``: what the transaction did to entities, so
      that assignment sends nothing twice and looks up nothing it knows (see each);
    - ``batch``: a batch of uplinks' look-ups (:class:`BatchCache`), None outside a batch;
    - ``pinned``: rows held for the transaction (:meth:`held`).
    """

    def __init__(self, session: Session, platform: Platform) -> None:
        self.session = session
        self.platform = platform
        self.types = platform.types
        self.entities = EntityStore(session, self.types)
        self.outbox = Outbox(dependents=self.types.dependents)  # compaction (store/outbox.py)
        #: (edge, entity) whose ADDED event is not sent back to the edge that just created it
        self._no_echo: tuple[uuid.UUID, uuid.UUID] | None = None
        #: entities inserted by this transaction and not yet assigned nor made members anywhere
        self._fresh: set[uuid.UUID] = set()
        #: entities this transaction created from an edge's uplinks: that edge may change them
        #: in the same batch, whatever an assignment rule made of them
        self._created_by_edge: set[uuid.UUID] = set()
        self.batch: BatchCache | None = None
        #: whether new entities, assignments and memberships are queued and written set-based
        #: (store/rows.py): in a batch of uplinks' optimistic pass, where any refusal rolls the
        #: whole attempt back (the pass that applies each event in a savepoint writes directly)
        self._queue_rows = False
        #: the edges each entity is directly assigned to, as read in this transaction (dropped
        #: with ``batch.edges_of`` on every change of its assignments)
        self._direct: dict[uuid.UUID, set[uuid.UUID]] = {}
        #: rows held for this transaction by id (the identity map keeps only weak references)
        self.pinned: dict[uuid.UUID, Any] = {}

    def held(self, model: type[T], row_id: uuid.UUID) -> T | None:
        """The row ``row_id`` of ``model``, read once per transaction (the session's identity map
        keeps only weak references: a bare ``session.get`` per event would reload it, flushing first)."""
        row = self.pinned.get(row_id)
        if row is None:
            row = self.pinned[row_id] = self.session.get(model, row_id)
        return row if isinstance(row, model) else None

    @functools.cached_property
    def edition(self) -> str:
        """Fixed at `winstar init cloud`; read once per transaction."""
        return str(get_config(self.session, "edition", "ce"))
