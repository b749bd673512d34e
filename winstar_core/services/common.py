"""Pieces shared by the cloud and the edge services, under the one name the rest of the code base
(the transport, the CLI, the tests, plugins) imports them by.

Each piece lives in a module of its own; this one only gathers them:

- :mod:`~winstar_core.services.constants`: event actions, the core's event types, limits;
- :mod:`~winstar_core.services.ids`: ``parse_uuid``, ``chunks`` of :data:`IN_CHUNK` ids;
- :mod:`~winstar_core.services.config`: ``node_config`` get/set;
- :mod:`~winstar_core.services.names`: name rules;
- :mod:`~winstar_core.services.peer`: what a peer sends (bodies, ids, readable states);
- :mod:`~winstar_core.services.batch`: :class:`BatchCache`, a receiver's look-ups for a batch;
- :mod:`~winstar_core.services.entities`: :class:`EntityStore`, ``entity_state``, ``scope_of``;
- :mod:`~winstar_core.services.views`: JSON views for the CLI and ``--data``.

Nothing in ``winstar_core/services`` imports this module except where a value must be read
through it at call time (``SYNC_IDS_PER_EVENT``, which tests lower here).
"""

from __future__ import annotations

from winstar_core.services.batch import BatchCache
from winstar_core.services.config import get_config, set_config
from winstar_core.services.constants import (
    ADDED,
    AUTHORITIES,
    DELETED,
    EDGE_EVENT_TYPE,
    EDGE_SUFFIX,
    EDITIONS,
    LIVENESS_MS,
    MAX_NAME,
    MAX_SCOPE,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    SYNC_EVENT_TYPE,
    SYNC_IDS_PER_EVENT,
    UNASSIGNED,
    UPDATED,
    USER_EVENT_TYPE,
)
from winstar_core.services.entities import EntityStore, entity_state, scope_of
from winstar_core.services.ids import IN_CHUNK, chunks, parse_uuid
from winstar_core.services.names import clean_name, fit_name, name_problem
from winstar_core.services.peer import (
    event_entity_id,
    optional_peer_uuid,
    parse_body,
    peer_uuid,
    readable_states,
)
from winstar_core.services.views import entity_json, event_json, iso, parse_json_data

__all__ = [
    "ADDED",
    "AUTHORITIES",
    "DELETED",
    "EDGE_EVENT_TYPE",
    "EDGE_SUFFIX",
    "EDITIONS",
    "IN_CHUNK",
    "LIVENESS_MS",
    "MAX_NAME",
    "MAX_SCOPE",
    "MEMBER_ADDED",
    "MEMBER_REMOVED",
    "SYNC_EVENT_TYPE",
    "SYNC_IDS_PER_EVENT",
    "UNASSIGNED",
    "UPDATED",
    "USER_EVENT_TYPE",
    "BatchCache",
    "EntityStore",
    "chunks",
    "clean_name",
    "entity_json",
    "entity_state",
    "event_entity_id",
    "event_json",
    "fit_name",
    "get_config",
    "iso",
    "name_problem",
    "optional_peer_uuid",
    "parse_body",
    "parse_json_data",
    "parse_uuid",
    "peer_uuid",
    "readable_states",
    "scope_of",
    "set_config",
]
