"""The services' vocabulary: event actions, the core's own event types, and the limits both
roles hold to. Constants only; no imports of the code base."""

from __future__ import annotations

# Event actions
ADDED = "ADDED"
UPDATED = "UPDATED"
DELETED = "DELETED"
UNASSIGNED = "UNASSIGNED"
MEMBER_ADDED = "MEMBER_ADDED"
MEMBER_REMOVED = "MEMBER_REMOVED"

#: event types the core itself uses; plugin wire names may not start with "_"
USER_EVENT_TYPE = "_user"
EDGE_EVENT_TYPE = "_edge"
SYNC_EVENT_TYPE = "_sync"
#: entity ids per ``_sync`` event: 100,000 ids are about 3.9 MB, well inside one message.
#: The cloud reads it as ``common.SYNC_IDS_PER_EVENT`` when it runs a sync (tests lower it there)
SYNC_IDS_PER_EVENT = 100_000

AUTHORITIES = ("TENANT_ADMIN", "CUSTOMER_USER")
EDITIONS = ("ce", "pe")

#: a link whose process has not touched its heartbeat for this long is shown as disconnected
#: (the process was killed without a chance to say so); heartbeats come every 5 s
LIVENESS_MS = 20_000

#: names (of tenants, customers, roles, edges, entities) and emails are at most this long
MAX_NAME = 255

#: how much of an edge's name goes into the suffix of a renamed entity (``NAME (EDGE_NAME)``)
EDGE_SUFFIX = 200

#: the longest name scope (``entity.name_scope``)
MAX_SCOPE = 64
