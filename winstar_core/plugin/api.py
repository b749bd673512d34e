"""The objects the core hands to plugins' hooks: small, typed, documented; never a service.

A rule for entities created on an edge (``winstar_edge_entity_created``) receives an
:class:`EdgeCreation`: the edge, the new entity, the edition, and the few operations a rule needs.
Entities reach a rule as :class:`EntityInfo` snapshots; operations take them back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class EdgeInfo:
    """An edge, as a rule sees it."""

    #: the edge's id in the cloud
    id: uuid.UUID
    #: its name (unique in its tenant)
    name: str
    #: the tenant it belongs to
    tenant_id: uuid.UUID
    #: the customer it is assigned to, if any
    customer_id: uuid.UUID | None


@dataclass(frozen=True)
class EntityInfo:
    """An entity, as a rule sees it (a snapshot: changing it changes nothing)."""

    id: uuid.UUID
    #: the entity type's wire name
    type: str
    name: str
    tenant_id: uuid.UUID
    #: the entity's data, as validated by its type's schema (a read-only view)
    data: Mapping[str, Any]
    #: the edge that created it, None for an entity created in the cloud
    origin_edge_id: uuid.UUID | None


@runtime_checkable
class EdgeCreation(Protocol):
    """What a ``winstar_edge_entity_created`` rule gets: an entity an edge just created, stored in
    the cloud, and the operations to place it. Everything runs in the transaction that stores the
    entity: the operations write the events for the edges in that same transaction, and a rule
    that raises refuses the edge's event (it becomes that uplink's FAILED reason; nothing of it is
    kept)."""

    #: the edge that created the entity
    edge: EdgeInfo
    #: the new entity
    entity: EntityInfo
    #: ``"ce"`` or ``"pe"``, fixed when the cloud was initialised
    edition: str

    def find_entity(self, type_name: str, name: str, scope: str = "") -> EntityInfo | None:
        """The entity of ``type_name`` called ``name`` (in name scope ``scope``, see
        ``EntityType.name_scope``) in the edge's tenant, or None."""
        ...

    def create_entity(self, type_name: str, name: str, data: Mapping[str, Any] | None = None) -> EntityInfo:
        """Create an entity in the edge's tenant (validated by its type; a name taken in its scope
        is a :class:`~winstar_core.errors.Conflict`). It is assigned to no edge yet."""
        ...

    def add_member(self, container: EntityInfo, member: EntityInfo | None = None) -> None:
        """Make ``member`` (default: the new entity) a member of the container ``container``;
        edges the container is assigned to receive it. Adding it twice changes nothing."""
        ...

    def assign(self, entity: EntityInfo | None = None) -> None:
        """Assign ``entity`` (default: the new entity) to the edge that created the new entity.
        Assigning it twice changes nothing."""
        ...
