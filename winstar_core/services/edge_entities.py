"""The edge's own entities: creating (who may, by edition), changing and deleting them, each with
its ``cloud_event`` uplink; and the uplinks themselves (listing, counting, retrying, dismissing)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from winstar_core.errors import NotFound, PermissionDenied, WinstarError
from winstar_core.services.constants import ADDED, DELETED, UPDATED
from winstar_core.services.edge_base import EdgeBase
from winstar_core.services.entities import entity_state
from winstar_core.services.retention import dismiss
from winstar_core.store.models import PENDING, CloudEvent, Entity, User
from winstar_core.store.outbox import OutboxEvent, list_events, retry_failed


def may_write(user: User, resource: str, edition: str) -> bool:
    """The brief's rule for creating an entity on an edge.

    CE: any tenant administrator. PE: any user one of whose roles grants ``RESOURCE:WRITE``
    (``ALL`` matches any resource or operation).
    """
    if edition == "ce":
        return user.authority == "TENANT_ADMIN"
    granted = {p.upper() for p in user.permissions or []}
    wanted = {f"{resource}:WRITE", f"{resource}:ALL", "ALL:WRITE", "ALL:ALL"}
    return bool(granted & wanted)


class EdgeEntities(EdgeBase):
    """Local entities and their uplinks. Uses ``session``, ``entities``, ``outbox`` and the
    configuration (this edge's id, tenant and edition)."""

    def create_entity(
        self, type_name: str, name: str, data: dict[str, Any] | None, *, user_email: str | None
    ) -> Entity:
        """Create an entity on this edge for ``user_email``, whom the edition's rule must allow
        (:func:`may_write`), and queue its ADDED uplink."""
        etype = self.types.get(type_name)
        if not etype.creatable_on_edge:
            raise PermissionDenied(
                f"entities of type {type_name} cannot be created on an edge: assign them to it in the cloud"
            )
        if not user_email:
            raise WinstarError("creating an entity on an edge needs --user EMAIL (a user the edge knows)")
        edge_id, tenant_id, edition = self._require_configured()
        user = self.session.scalars(sa.select(User).where(User.email == user_email)).first()
        if user is None:
            raise NotFound(f"no user {user_email!r} is known to this edge")
        if user.tenant_id != tenant_id:
            raise PermissionDenied(f"user {user_email!r} belongs to another tenant than this edge")
        if not may_write(user, etype.resource(), edition):
            need = (
                "a tenant administrator" if edition == "ce" else f"a role granting {etype.resource()}:WRITE"
            )
            raise PermissionDenied(
                f"user {user_email!r} may not create a {type_name} on this edge "
                f"({edition.upper()} needs {need})"
            )
        entity = self.entities.insert(
            type_name=type_name,
            name=name,
            tenant_id=tenant_id,
            data=data,
            customer_id=user.customer_id,
            origin_edge_id=edge_id,
        )
        self._uplink(entity, ADDED)
        return entity

    def _owned(self, entity: Entity) -> None:
        if entity.origin_edge_id is None or entity.origin_edge_id != self.edge_id:
            raise PermissionDenied(
                f"{entity.type} {entity.name!r} is managed by the cloud: change it there, not on the edge"
            )

    def update_entity(
        self, entity: Entity, *, name: str | None = None, data: dict[str, Any] | None = None
    ) -> Entity:
        """Change one of this edge's own entities; an UPDATED uplink if anything changed."""
        self._owned(entity)
        if self.entities.change(entity, name=name, data=data):
            self._uplink(entity, UPDATED)
        return entity

    def delete_entity(self, entity: Entity) -> None:
        """Delete one of this edge's own entities, with a DELETED uplink."""
        self._owned(entity)
        self.outbox.uplink(OutboxEvent(entity.tenant_id, entity.type, DELETED, entity.id, b""))
        self.session.delete(entity)
        self.session.flush()

    def _uplink(self, entity: Entity, action: str) -> None:
        body = entity_state(entity, self.types).SerializeToString()
        self.outbox.uplink(OutboxEvent(entity.tenant_id, entity.type, action, entity.id, body))

    def uplinks(self, status: str | None = None, limit: int | None = None) -> list[CloudEvent]:
        """The uplinks, newest first (those in ``status``, at most ``limit``, if given)."""
        return list_events(self.session, CloudEvent, status, limit)

    def retry_failed(self, seqs: list[int] | None = None) -> list[int]:
        """Send FAILED uplinks again (all, or those ``seqs``), as new events."""
        return retry_failed(self.session, CloudEvent, seqs, refresh=self.entities.current_body)

    def dismiss_failed(self, seqs: list[int] | None = None) -> list[int]:
        """Mark FAILED uplinks (all, or those ``seqs``) dismissed: seen by an operator, pruned
        after the retention. Returns the seqs dismissed (a seq not FAILED is not)."""
        return dismiss(self.session, CloudEvent, seqs)

    def pending_uplinks(self, status: str = PENDING) -> int:
        """How many uplinks are in ``status`` (PENDING: not delivered yet)."""
        return int(
            self.session.scalar(
                sa.select(sa.func.count()).select_from(CloudEvent).where(CloudEvent.status == status)
            )
            or 0
        )
