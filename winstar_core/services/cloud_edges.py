"""The cloud's edges: creating one (with its secret), finding and listing them, their downlinks
(pending counts, the list, retrying or dismissing the failed ones) and asking for a Sync Edge."""

from __future__ import annotations

import secrets
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import object_session

from winstar_core.errors import Conflict, NotFound
from winstar_core.services.cloud_base import CloudBase
from winstar_core.services.credentials import hash_secret
from winstar_core.services.ids import parse_uuid
from winstar_core.services.names import clean_name
from winstar_core.services.nodes import node_alive
from winstar_core.services.retention import dismiss
from winstar_core.store.models import (
    Assignment,
    CloudNode,
    Customer,
    Edge,
    EdgeEvent,
    StreamCounter,
    StreamFailure,
    StreamMark,
    Tenant,
    now_ms,
)
from winstar_core.store.outbox import (
    NOTIFY_CHANNEL_DOWNLINK,
    downlink_stream,
    ensure_stream,
    list_events,
    notify_senders,
    retry_failed,
    uplink_mark_stream,
)


def edge_node(edge: Edge) -> CloudNode | None:
    """The live node serving the edge, None if none does: derived from the node's heartbeat,
    never from a flag that a killed process leaves behind (see services/nodes.py)."""
    if edge.node_id is None:
        return None
    session = object_session(edge)
    node = session.get(CloudNode, edge.node_id) if session is not None else None
    return node if node_alive(node) else None


def edge_connected(edge: Edge) -> bool:
    """Whether the edge's link is up: a live node serves it."""
    return edge_node(edge) is not None


def edge_node_name(edge: Edge) -> str | None:
    """The name of the node serving the edge, None when it is not connected."""
    node = edge_node(edge)
    return node.name if node is not None else None


class CloudEdges(CloudBase):
    """Edges and their downlink streams. Uses ``session`` and ``entities`` (a retried event
    carries its entity's current state); writes no event itself."""

    def create_edge(self, name: str, tenant: Tenant, customer: Customer | None = None) -> tuple[Edge, str]:
        """A new edge of ``tenant`` and its secret (returned once: the cloud keeps only its hash)."""
        name = clean_name(name, "an edge")
        if self.session.scalars(
            sa.select(Edge).where(Edge.tenant_id == tenant.id, Edge.name == name)
        ).first():
            raise Conflict(f"an edge named {name!r} already exists in tenant {tenant.name!r}")
        secret = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        edge = Edge(
            tenant_id=tenant.id,
            customer_id=customer.id if customer else None,
            name=name,
            routing_key=str(uuid.uuid4()),
            secret_salt=salt,
            secret_hash=hash_secret(secret, salt),
            connected=False,
            sync_requested=False,
            created_time=now_ms(),
        )
        self.session.add(edge)
        self.session.flush()
        ensure_stream(self.session, downlink_stream(edge.id))
        return edge, secret

    def rotate_secret(self, edge: Edge) -> str:
        """Give ``edge`` a new secret (returned once). The old one opens nothing from now on: the
        edge's next connection must bring the new one (a link up now runs until it drops)."""
        secret = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        edge.secret_salt = salt
        edge.secret_hash = hash_secret(secret, salt)
        self.session.flush()
        return secret

    def delete_edge(self, edge: Edge) -> None:
        """Delete ``edge`` with its assignments, its downlinks and its streams' marks; the entities
        assigned to it stay. A node serving it drops its link (the edge is unknown from then on)."""
        edge_id = edge.id
        self.session.execute(sa.delete(Assignment).where(Assignment.edge_id == edge_id))
        self.session.execute(sa.delete(EdgeEvent).where(EdgeEvent.edge_id == edge_id))
        streams = [downlink_stream(edge_id), uplink_mark_stream(edge_id)]
        for model in (StreamCounter, StreamMark, StreamFailure):
            self.session.execute(sa.delete(model).where(model.stream.in_(streams)))
        self._direct.clear()  # what the transaction knew of assignments
        self.session.delete(edge)
        self.session.flush()
        notify_senders(self.session, [edge_id], uplinks=False)

    def find_edge(self, ref: str | uuid.UUID, tenant: Tenant | None = None) -> Edge:
        """The edge with id or name ``ref`` (in ``tenant`` if given); a name held in several tenants is
        a :class:`Conflict`."""
        uid = parse_uuid(ref)
        stmt = sa.select(Edge).where(Edge.id == uid if uid else Edge.name == str(ref))
        if tenant is not None:
            stmt = stmt.where(Edge.tenant_id == tenant.id)
        found = list(self.session.scalars(stmt.limit(2)))
        if not found:
            raise NotFound(f"no edge {ref!r}")
        if len(found) > 1:
            raise Conflict(f"edge name {ref!r} exists in several tenants: use --tenant or its id")
        return found[0]

    def edge_by_routing_key(self, routing_key: str) -> Edge | None:
        """The edge a Hello's ``routing_key`` names, None if none."""
        return self.session.scalars(sa.select(Edge).where(Edge.routing_key == routing_key)).first()

    def list_edges(self) -> list[Edge]:
        """Every edge, by name."""
        return list(self.session.scalars(sa.select(Edge).order_by(Edge.name)))

    def pending_counts(self) -> dict[uuid.UUID, int]:
        """How many PENDING downlinks each edge has (an edge with none is left out)."""
        stmt = (
            sa.select(EdgeEvent.edge_id, sa.func.count())
            .where(EdgeEvent.status == "PENDING")
            .group_by(EdgeEvent.edge_id)
        )
        return {edge_id: int(n) for edge_id, n in self.session.execute(stmt)}

    def downlinks(self, edge: Edge, status: str | None = None, limit: int | None = None) -> list[EdgeEvent]:
        """The downlinks of ``edge``, newest first (those in ``status``, at most ``limit``, if given)."""
        return list_events(self.session, EdgeEvent, status, limit, edge.id)

    def retry_failed(self, edge: Edge, seqs: list[int] | None = None) -> list[int]:
        """Send FAILED downlinks of ``edge`` again (all, or those ``seqs``), as new events."""
        return retry_failed(
            self.session, EdgeEvent, seqs, edge.id, lambda row: self.entities.current_body(row, edge.id)
        )

    def dismiss_failed(self, edge: Edge, seqs: list[int] | None = None) -> list[int]:
        """Mark FAILED downlinks of ``edge`` (all, or those ``seqs``) dismissed: seen by an
        operator, pruned after the retention. Returns the seqs dismissed (a seq not FAILED is not)."""
        return dismiss(self.session, EdgeEvent, seqs, edge.id)

    def request_sync(self, edge: Edge) -> None:
        """Sync Edge: the node serving the edge runs it now, or when the edge reconnects."""
        edge.sync_requested = True
        self.session.flush()
        notify_senders(self.session, [edge.id], uplinks=False)
        if self.session.get_bind().dialect.name == "postgresql":  # the serving node starts it at once
            self.session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL_DOWNLINK, f"sync:{edge.id}")))
