"""Small helpers for the core's tests."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

from winstar_core.node import Node
from winstar_core.store.models import CloudEvent, EdgeEvent

#: ``WINSTAR_TEST_THOROUGH=1``: the costliest property tests run their full example counts (a
#: nightly or pre-release run); the everyday suite runs fewer (see :func:`examples`)
THOROUGH = os.environ.get("WINSTAR_TEST_THOROUGH", "").lower() in ("1", "true", "yes")


def examples(everyday: int, thorough: int) -> int:
    """A property test's ``max_examples``: ``everyday`` in the suite's usual run, ``thorough``
    with ``WINSTAR_TEST_THOROUGH=1``."""
    return thorough if THOROUGH else everyday


def downlink_rows(node: Node, edge_id: Any = None) -> list[tuple[int, str, str, str]]:
    """(seq, type, action, entity name or id) of every edge_event row, in seq order."""
    with node.db.begin() as s:
        stmt = sa.select(EdgeEvent).order_by(EdgeEvent.edge_id, EdgeEvent.seq)
        if edge_id is not None:
            stmt = stmt.where(EdgeEvent.edge_id == edge_id)
        return [(e.seq, e.type, e.action, str(e.entity_id)) for e in s.scalars(stmt)]


def uplink_rows(node: Node) -> list[tuple[int, str, str, str]]:
    with node.db.begin() as s:
        return [
            (e.seq, e.type, e.action, str(e.entity_id))
            for e in s.scalars(sa.select(CloudEvent).order_by(CloudEvent.seq))
        ]


def make_tenant_and_edge(node: Node, tenant: str = "Acme", edge: str = "edge-1") -> tuple[Any, Any, str]:
    with node.cloud() as c:
        t = c.create_tenant(tenant)
        e, secret = c.create_edge(edge, t)
        return t, e, secret
