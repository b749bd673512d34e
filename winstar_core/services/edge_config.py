"""What the cloud tells an edge: its configuration (sent in the Welcome, or as an ``_edge``
downlink) and its users (``_user`` downlinks), checked before anything is stored."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from winstar_core.entity_types import shown, text_problem
from winstar_core.errors import PermissionDenied, WinstarError
from winstar_core.services.config import set_config
from winstar_core.services.constants import AUTHORITIES, EDITIONS, MAX_NAME
from winstar_core.services.edge_base import EdgeBase
from winstar_core.services.names import clean_name
from winstar_core.services.peer import optional_peer_uuid, peer_uuid
from winstar_core.store.models import Tenant, User, now_ms
from winstar_core.transport.pb import sync_pb2 as pb

#: the edge service's logger (the name it had before the service was split in modules)
log = logging.getLogger("winstar_core.services.edge")


class EdgeCloudConfig(EdgeBase):
    """Configuration and users from the cloud. Uses ``session`` and ``_config`` (cleared when
    the configuration changes)."""

    def apply_config(self, config: pb.EdgeConfig, users: Iterable[pb.UserInfo] | None = None) -> None:
        """Store what the cloud says this edge is (sent in the Welcome), and its users.

        The users are upserted: the list never removes one (a Welcome without users must not wipe
        the edge's), only a ``_user`` DELETED downlink does. A user the edge cannot take (no UUID,
        no email...) is skipped with a log line: the Welcome is the session's handshake, and one
        bad user must not refuse it, nor keep the others out. A configuration that is not one
        (an edge or tenant id that is not a UUID...) is a :class:`WinstarError`."""
        edge_id = peer_uuid(config.edge_id, "the edge configuration's edge id")
        tenant_id = peer_uuid(config.tenant_id, "the edge configuration's tenant id")
        customer_id = optional_peer_uuid(config.customer_id, "the edge configuration's customer id")
        if config.edition not in EDITIONS:
            raise WinstarError(
                f"the edge configuration's edition {shown(config.edition)} is not one of {', '.join(EDITIONS)}"
            )
        edge_name = clean_name(config.name, "the edge")
        tenant_name = (
            clean_name(config.tenant_name, "the edge's tenant") if config.tenant_name.strip() else ""
        )
        held = self.tenant_id
        if held is not None and held != tenant_id:  # tenants never mix, whatever a cloud says
            raise WinstarError(
                f"the edge configuration names tenant {tenant_id}, and this edge holds tenant {held}'s"
                " entities: a database serves one tenant"
            )
        if self.session.get(Tenant, tenant_id) is None:
            taken = self.session.scalars(sa.select(Tenant.id).where(Tenant.name == tenant_name)).first()
            name = tenant_name if tenant_name and taken is None else str(tenant_id)
            self.session.add(Tenant(id=tenant_id, name=name, created_time=now_ms()))
        for key, value in (
            ("edge_id", str(edge_id)),
            ("edge_name", edge_name),
            ("tenant_id", str(tenant_id)),
            ("customer_id", str(customer_id) if customer_id else None),
            ("edition", config.edition),
        ):
            set_config(self.session, key, value)
        self._config.clear()
        self.session.flush()
        for info in users or ():
            try:
                fields = self._user_fields(info)
            except WinstarError as exc:
                log.warning("the cloud's welcome names a user this edge cannot take; skipped: %s", exc)
                continue
            self._upsert_user(fields)

    def apply_user(self, info: pb.UserInfo) -> None:
        """Add or change one user the cloud sent; a :class:`WinstarError` if it is not one."""
        self._upsert_user(self._user_fields(info))

    def _user_fields(self, info: pb.UserInfo) -> dict[str, Any]:
        """The row a UserInfo describes, checked: everything the store could refuse is refused
        here, with a one-line reason, before anything is written."""
        uid = peer_uuid(info.id, "the user's id")
        email = info.email.strip()
        who = f"user {uid}"
        if not email:
            raise WinstarError(f"{who} has no email address")
        why = text_problem(email)
        if why:
            raise WinstarError(f"{who}'s email may not contain {why}")
        if len(email) > MAX_NAME:
            raise WinstarError(f"{who}'s email has {len(email)} characters, more than {MAX_NAME}")
        if info.authority not in AUTHORITIES:
            raise WinstarError(
                f"{who}'s authority {shown(info.authority)} is not one of {', '.join(AUTHORITIES)}"
            )
        tenant_id = optional_peer_uuid(info.tenant_id, f"{who}'s tenant id") or self.tenant_id
        if tenant_id is None:
            raise WinstarError(f"{who} names no tenant, and this edge does not know its own yet")
        if self.tenant_id is not None and tenant_id != self.tenant_id:
            raise PermissionDenied(f"{who} belongs to another tenant than this edge")
        for permission in info.permissions:
            why = text_problem(permission)
            if why:
                raise WinstarError(f"{who}'s permissions may not contain {why}")
        return {
            "id": uid,
            "tenant_id": tenant_id,
            "email": email,
            "authority": info.authority,
            "customer_id": optional_peer_uuid(info.customer_id, f"{who}'s customer id"),
            "permissions": sorted(info.permissions),
        }

    def _upsert_user(self, fields: dict[str, Any]) -> None:
        uid = fields["id"]
        user = self.session.get(User, uid)
        clash = self.session.scalars(
            sa.select(User).where(User.email == fields["email"], User.id != uid)
        ).first()
        if clash is not None:  # the email moved to another account in the cloud
            self.session.delete(clash)
            self.session.flush()
        if user is None:
            user = User(id=uid, created_time=now_ms())
            self.session.add(user)
        for key, value in fields.items():
            setattr(user, key, value)
        user.updated_time = now_ms()
        self.session.flush()

    def remove_user(self, user_id: uuid.UUID) -> None:
        """Remove a user (a ``_user`` DELETED downlink); nothing to do for an unknown one."""
        self.session.execute(sa.delete(User).where(User.id == user_id))
