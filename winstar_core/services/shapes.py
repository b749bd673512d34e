"""The JSON shapes of the cloud's objects (tenants, customers, roles, users, edges and an edge's
details), as `winstar … --json` prints them and the REST API answers them: one definition for both
(CLI.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.services.cloud_edges import edge_node_name
from winstar_core.services.instances import event_counts
from winstar_core.services.nodes import node_alive
from winstar_core.services.views import iso
from winstar_core.store.models import (
    FAILED,
    HELD,
    PENDING,
    ApiToken,
    CloudNode,
    Customer,
    Edge,
    EdgeEvent,
    Role,
    Tenant,
    User,
    now_ms,
)

if TYPE_CHECKING:
    from winstar_core.services.cloud import CloudService


def tenant_json(t: Tenant) -> dict[str, str]:
    """A tenant as `winstar tenant create` shows it."""
    return {"id": str(t.id), "name": t.name}


def customer_json(c: Customer) -> dict[str, str]:
    """A customer as `winstar customer create` shows it."""
    return {"id": str(c.id), "name": c.name, "tenant_id": str(c.tenant_id)}


def role_json(r: Role) -> dict[str, object]:
    """A role as `winstar role create` shows it."""
    return {
        "id": str(r.id),
        "name": r.name,
        "tenant_id": str(r.tenant_id),
        "permissions": list(r.permissions),
    }


def user_json(cloud: CloudService, u: User) -> dict[str, object]:
    """A user as `winstar user create` shows it, with their roles and the permissions they grant."""
    return {
        "id": str(u.id),
        "email": u.email,
        "authority": u.authority,
        "tenant_id": str(u.tenant_id),
        "customer_id": str(u.customer_id) if u.customer_id else None,
        "roles": [r.name for r in cloud.user_roles(u)],
        "permissions": cloud.user_permissions(u),
    }


def token_json(t: ApiToken) -> dict[str, Any]:
    """An API token as `winstar token list` shows it (never the token itself)."""
    return {
        "id": str(t.id),
        "name": t.name,
        "created_time": iso(t.created_time),
        "last_used": iso(t.last_used),
        "revoked": t.revoked_time is not None,
    }


def edge_json(e: Any, pending: int, node: str | None) -> dict[str, Any]:
    """An edge as `winstar edge list` shows it. ``e``: an :class:`Edge` or a row with its columns;
    ``node``: the name of the live node serving it (None: not connected)."""
    return {
        "id": str(e.id),
        "name": e.name,
        "tenant_id": str(e.tenant_id),
        "customer_id": str(e.customer_id) if e.customer_id else None,
        "connected": node is not None,
        "node": node,
        "last_seen": iso(e.last_seen),
        "pending": pending,
    }


def edges_view(session: Session, where: Iterable[Any] = (), *, console: bool = False) -> list[dict[str, Any]]:
    """`winstar edge list` (of the edges matching ``where``), by name; for the ``console``, each
    edge's ``failed`` downlinks and ``last_sync`` too. Read as plain rows, the live nodes and the
    counts once: a thousand edges in a few statements, no ORM object per edge."""
    where = list(where)
    columns = (
        Edge.id,
        Edge.name,
        Edge.tenant_id,
        Edge.customer_id,
        Edge.node_id,
        Edge.last_seen,
        Edge.last_sync,
    )
    rows = session.execute(sa.select(*columns).where(*where).order_by(Edge.name)).all()
    if not rows:
        return []
    now = now_ms()
    live = {n.id: n.name for n in session.scalars(sa.select(CloudNode)) if node_alive(n, now)}
    ids = sa.select(Edge.id).where(*where) if where else None
    counts: dict[tuple[uuid.UUID, str], int] = {}
    for status in (PENDING, FAILED) if console else (PENDING,):  # each through its partial index
        stmt = sa.select(EdgeEvent.edge_id, sa.func.count()).where(EdgeEvent.status == status)
        if ids is not None:
            stmt = stmt.where(EdgeEvent.edge_id.in_(ids))
        for edge_id, n in session.execute(stmt.group_by(EdgeEvent.edge_id)):
            counts[(edge_id, status)] = int(n)
    out = []
    for r in rows:
        item = edge_json(r, counts.get((r.id, PENDING), 0), live.get(r.node_id))
        if console:
            item["failed"] = counts.get((r.id, FAILED), 0)
            item["last_sync"] = iso(r.last_sync)
        out.append(item)
    return out


def edge_details(cloud: CloudService, edge: Edge) -> dict[str, Any]:
    """An edge as `winstar edge show` shows it: its link, the box (instance) the cloud serves, its
    downlinks' counts and its last Sync Edge."""
    counts = event_counts(cloud.session, edge)
    outcome = cloud.sync_outcome(edge)
    base = edge_json(edge, counts.get(PENDING, 0), edge_node_name(edge))
    return {
        **{k: base[k] for k in ("id", "name", "tenant_id", "customer_id", "connected")},
        "node": base["node"],
        "instance": edge.instance_id,
        "conflict": edge.conflict,
        "last_seen": base["last_seen"],
        "pending": base["pending"],
        "failed": counts.get(FAILED, 0),
        "held": counts.get(HELD, 0),
        "sync": {
            "state": outcome["state"],
            "requested": bool(edge.sync_requested),
            "finished": iso(outcome["finished"]),
            # the cloud's counts (a full sync counts only "added"); bytes: what travelled
            **{k: outcome[k] for k in ("added", "updated", "removed", "unchanged")},
            # events of the last sync that failed / are held (the edge has not converged)
            "failed": outcome["failed"],
            "held": outcome["held"],
            "bytes": outcome["bytes"],
        },
    }
