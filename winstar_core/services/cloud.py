"""The cloud's side of the lifecycle: tenants, users, edges, entities, assignment, downlinks.

Every method runs inside the caller's transaction and writes the ``edge_event`` rows that its
change implies into the same transaction (through :class:`~winstar_core.store.outbox.Outbox`).

:class:`CloudService` is assembled here from one part per responsibility, each in its module:

==========================  ==========================================================
``cloud_base.CloudBase``    the shared state of one transaction (session, outbox...)
``cloud_tenancy``           tenants, customers, roles, users (and their ``_user`` events)
``cloud_edges``             edges, their downlink streams, retry, Sync Edge requests
``cloud_assignment``        effective sets, assign/unassign, members, their events
``cloud_entities``          entity create/update/delete
``cloud_uplinks``           applying what an edge sent up
``cloud_digest``            Sync Edge by digest: the digest, answering the edge's diff
``cloud_sync``              Sync Edge: when it runs, a full sync, its outcome
==========================  ==========================================================

This module also checks an edge's secret (:func:`check_secret`) and keeps every name the rest of
the code base imports from it.
"""

from __future__ import annotations

import hmac

from winstar_core.services.cloud_assignment import CloudAssignment
from winstar_core.services.cloud_base import CloudBase
from winstar_core.services.cloud_edges import CloudEdges
from winstar_core.services.cloud_edges import edge_connected as edge_connected
from winstar_core.services.cloud_edges import edge_node_name as edge_node_name
from winstar_core.services.cloud_entities import CloudEntities
from winstar_core.services.cloud_sync import CloudSync
from winstar_core.services.cloud_tenancy import CloudTenancy
from winstar_core.services.cloud_tenancy import parse_permission as parse_permission
from winstar_core.services.cloud_uplinks import CloudUplinks
from winstar_core.services.constants import EDITIONS as EDITIONS  # node.py takes it from here
from winstar_core.services.credentials import MAX_SECRET as MAX_SECRET
from winstar_core.services.credentials import SCRYPT as SCRYPT
from winstar_core.services.credentials import SECRET_PATTERN as SECRET_PATTERN
from winstar_core.services.credentials import hash_secret as hash_secret
from winstar_core.services.credentials import well_formed_secret as well_formed_secret
from winstar_core.store.models import Edge

#: hashed instead of a malformed secret, so that a refusal costs the same scrypt work as a check
_STAND_IN = "x" * 32


def check_secret(edge: Edge, secret: str) -> bool:
    """Whether ``secret`` is the edge's, compared exactly and in constant time: a malformed one
    costs the same scrypt work and comparison as a wrong one (no fast path to time).

    It hashes with this module's ``hash_secret`` (looked up at call time), the one tests count."""
    ok = well_formed_secret(secret)
    match = hmac.compare_digest(hash_secret(secret if ok else _STAND_IN, edge.secret_salt), edge.secret_hash)
    return ok and match


class CloudService(
    CloudUplinks,
    CloudSync,
    CloudEdges,
    CloudEntities,
    CloudAssignment,
    CloudTenancy,
    CloudBase,
):
    """What a cloud node can do, in one transaction (``CloudService(session, platform)``).

    Its methods come from the parts listed in this module's docstring; each part documents the
    state of :class:`CloudBase` it uses. A part builds only on the parts it names as bases."""
