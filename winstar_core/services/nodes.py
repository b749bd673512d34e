"""The cloud's nodes and which one serves each edge, decided in PostgreSQL (or SQLite).

Every `winstar run` of a cloud database is a node: it registers a ``cloud_node`` row (name,
address, start, heartbeat) and removes it when it stops. An edge's session is owned through its
``edge`` row: ``node_id`` (the node serving it) and ``session_id`` (the session on that node).
Ownership is taken at connect, in the transaction that admits the box, by writing both columns:
the newest session wins (the box reconnected; the older stream is dead or about to be noticed
dead), and the node that lost it is told (NOTIFY ``winstar_session``) and ends its session; its
heartbeat finds out too if the notification is lost. A session releases the edge only while it
still owns it. Whether an edge is connected, and by which node, is derived from a live owner: a
node whose heartbeat is older than :data:`NODE_LIVENESS_MS` serves nothing, whatever its rows say
(a node killed with -9 leaves them behind), and its registration expires after
:data:`NODE_EXPIRY_MS`.

Safety does not rest on ownership: two sessions of one box applying at once serialize on the
stream's mark row (``held_mark``), so an event is never applied twice; ownership keeps one sender
per edge and the picture of the fleet true.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.errors import Conflict
from winstar_core.services.ids import chunks
from winstar_core.services.names import clean_name
from winstar_core.services.views import iso
from winstar_core.store.models import CloudNode, Edge, now_ms

#: how often a node writes its heartbeat (and checks the sessions it owns)
NODE_HEARTBEAT_S = 5.0
#: a node not heard of for this long serves nothing (its edges show disconnected)
NODE_LIVENESS_MS = 15_000
#: a dead node's registration is removed after this long
NODE_EXPIRY_MS = 60_000
#: the channel that tells a node one of its sessions was taken over (payload ``EDGE_ID:SESSION_ID``)
NOTIFY_CHANNEL_SESSION = "winstar_session"


def node_alive(node: CloudNode | None, now: int | None = None) -> bool:
    """Whether ``node`` is a live node (its heartbeat is recent)."""
    return node is not None and (now or now_ms()) - node.last_seen < NODE_LIVENESS_MS


def register_node(session: Session, name: str, address: str) -> CloudNode:
    """Register this process as a node named ``name`` serving on ``address``. A live node of that
    name elsewhere is a :class:`Conflict` (two processes would share one identity); a dead one,
    or one registered at this very address (which this process could bind: the old one is gone,
    killed a moment ago), is replaced."""
    name = clean_name(name, "a cloud node")
    now = now_ms()
    existing = session.scalars(sa.select(CloudNode).where(CloudNode.name == name)).first()
    if existing is not None:
        if node_alive(existing, now) and existing.address != address:
            raise Conflict(
                f"a cloud node named {name!r} is running (last seen {iso(existing.last_seen)}):"
                " give this one another --node-name"
            )
        forget_node(session, existing.id)
    node = CloudNode(id=uuid.uuid4(), name=name, address=address, started=now, last_seen=now)
    session.add(node)
    session.flush()
    return node


def forget_node(session: Session, node_id: uuid.UUID) -> None:
    """Remove a node's registration and its claim on every edge (a clean stop, or expiry)."""
    session.execute(
        sa.update(Edge)
        .where(Edge.node_id == node_id)
        .values(node_id=None, session_id=None, connected=False)
        .execution_options(synchronize_session=False)
    )
    session.execute(sa.delete(CloudNode).where(CloudNode.id == node_id))


def claim_edge(session: Session, edge: Edge, node_id: uuid.UUID, session_id: uuid.UUID) -> uuid.UUID | None:
    """This node's session ``session_id`` now serves ``edge`` (newest wins). Returns the node
    that served it until now, if another live one did (to be told: :data:`NOTIFY_CHANNEL_SESSION`)."""
    before = edge.node_id if edge.session_id not in (None, session_id) else None
    edge.node_id = node_id
    edge.session_id = session_id
    edge.connected = True
    edge.last_seen = now_ms()
    edge.last_error = None
    session.flush()
    if before is not None and before != node_id:
        payload = f"{edge.id}:{session_id}"
        if session.get_bind().dialect.name == "postgresql":
            session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL_SESSION, payload)))
        return before
    return None


def release_edge(session: Session, edge_id: uuid.UUID, session_id: uuid.UUID, error: str | None) -> bool:
    """The session ``session_id`` ended: the edge is free, unless another session took it over
    meanwhile (then nothing changes). Returns whether it was released."""
    result: Any = session.execute(
        sa.update(Edge)
        .where(Edge.id == edge_id, Edge.session_id == session_id)
        .values(node_id=None, session_id=None, connected=False, last_seen=now_ms(), last_error=error)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


@dataclass
class Beat:
    """What a node learns at its heartbeat."""

    #: of the sessions it asked about, those another session took over (edge id -> its session)
    lost: dict[uuid.UUID, uuid.UUID | None]
    #: expired registrations of dead nodes it removed
    expired: int


def heartbeat(session: Session, node: CloudNode, owned: dict[uuid.UUID, uuid.UUID]) -> Beat:
    """Write ``node``'s heartbeat and its edges' ``last_seen`` (two statements, whatever the
    number of edges), check that it still owns the sessions ``owned`` (edge id -> session id),
    and remove dead nodes' expired registrations."""
    now = now_ms()
    result: Any = session.execute(sa.update(CloudNode).where(CloudNode.id == node.id).values(last_seen=now))
    found = result.rowcount
    if not found:  # this node stalled past its expiry and another removed it: register again
        taken = session.scalars(sa.select(CloudNode.id).where(CloudNode.name == node.name)).first()
        if taken is not None:  # and another node took its name meanwhile: take a name of its own
            node.name = f"{node.name[:200]} ({str(node.id)[:8]})"
        session.add(
            CloudNode(id=node.id, name=node.name, address=node.address, started=node.started, last_seen=now)
        )
        session.flush()
    session.execute(
        sa.update(Edge)
        .where(Edge.node_id == node.id)
        .values(last_seen=now)
        .execution_options(synchronize_session=False)
    )
    lost: dict[uuid.UUID, uuid.UUID | None] = {}
    for chunk in chunks(owned):
        now_owned = dict(session.execute(sa.select(Edge.id, Edge.session_id).where(Edge.id.in_(chunk))).all())
        for edge_id in chunk:
            if edge_id not in now_owned:  # the edge was deleted
                lost[edge_id] = None
            elif now_owned[edge_id] != owned[edge_id]:
                lost[edge_id] = now_owned[edge_id]
    expired = 0
    for dead in session.scalars(
        sa.select(CloudNode.id).where(CloudNode.last_seen < now - NODE_EXPIRY_MS, CloudNode.id != node.id)
    ).all():
        forget_node(session, dead)
        expired += 1
    return Beat(lost=lost, expired=expired)


def due_syncs(session: Session, node_id: uuid.UUID) -> list[uuid.UUID]:
    """The edges this node serves that have a Sync Edge requested."""
    return list(
        session.scalars(sa.select(Edge.id).where(Edge.node_id == node_id, Edge.sync_requested.is_(True)))
    )


def live_nodes(session: Session | sa.Connection) -> dict[uuid.UUID, CloudNode]:
    """The live nodes, by id."""
    now = now_ms()
    rows = session.execute(sa.select(CloudNode).where(CloudNode.last_seen >= now - NODE_LIVENESS_MS))
    return {n.id: n for n in rows.scalars()}


def serving_node(edge: Edge, live: dict[uuid.UUID, CloudNode]) -> str | None:
    """The name of the live node serving ``edge``, None if none does (not connected)."""
    node = live.get(edge.node_id) if edge.node_id is not None else None
    return node.name if node is not None else None


def nodes_view(session: Session) -> list[dict[str, object]]:
    """`winstar cloud nodes`: every registered node with the number of edges it serves."""
    now = now_ms()
    counts = dict(
        session.execute(
            sa.select(Edge.node_id, sa.func.count()).where(Edge.node_id.is_not(None)).group_by(Edge.node_id)
        ).all()
    )
    return [
        {
            "name": n.name,
            "address": n.address,
            "started": iso(n.started),
            "last_seen": iso(n.last_seen),
            "alive": node_alive(n, now),
            "edges": int(counts.get(n.id, 0)) if node_alive(n, now) else 0,
        }
        for n in session.scalars(sa.select(CloudNode).order_by(CloudNode.name))
    ]


def pending_edges(session: Session | sa.Connection, edge_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Of ``edge_ids``, those with PENDING downlinks (the node's polling fallback: one statement
    per :data:`~winstar_core.services.ids.IN_CHUNK` edges, by the pending index)."""
    from winstar_core.store.models import EdgeEvent

    out: set[uuid.UUID] = set()
    for chunk in chunks(edge_ids):
        out.update(
            session.execute(
                sa.select(EdgeEvent.edge_id)
                .where(EdgeEvent.status == "PENDING", EdgeEvent.edge_id.in_(chunk))
                .distinct()
            ).scalars()
        )
    return out
