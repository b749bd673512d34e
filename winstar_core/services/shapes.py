"""The JSON shapes of the cloud's objects (tenants, customers, roles, users, edges and an edge's
details), as `winstar … --json` prints them and the REST API answers them: one definition for both
(CLI.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from winstar_core.services.cloud_edges import edge_connected, edge_node_name
from winstar_core.services.instances import event_counts
from winstar_core.services.views import iso
from winstar_core.store.models import FAILED, HELD, PENDING, Customer, Edge, Role, Tenant, User

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


def edge_json(e: Edge, pending: int) -> dict[str, object]:
    """An edge as `winstar edge list` shows it."""
    return {
        "id": str(e.id),
        "name": e.name,
        "tenant_id": str(e.tenant_id),
        "customer_id": str(e.customer_id) if e.customer_id else None,
        "connected": edge_connected(e),
        "node": edge_node_name(e),
        "last_seen": iso(e.last_seen),
        "pending": pending,
    }


def edge_details(cloud: CloudService, edge: Edge) -> dict[str, Any]:
    """An edge as `winstar edge show` shows it: its link, the box (instance) the cloud serves, its
    downlinks' counts and its last Sync Edge."""
    counts = event_counts(cloud.session, edge)
    outcome = cloud.sync_outcome(edge)
    base = edge_json(edge, counts.get(PENDING, 0))
    return {
        **{k: base[k] for k in ("id", "name", "tenant_id", "customer_id", "connected")},
        "node": base["node"],
        "routing_key": edge.routing_key,
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
