"""The edge's side: local entities, creation rules, the ``cloud_event`` outbox, the cloud's config.

:class:`EdgeService` is assembled here from one part per responsibility, each in its module:

==========================  ==========================================================
``edge_base.EdgeBase``      the shared state of one transaction; the node's configuration
``edge_config``             configuration and users received from the cloud
``edge_entities``           the edge's own entities and their uplinks
``edge_sync``               what the cloud may not remove; the end of a Sync Edge
``edge_downlinks``          applying the cloud's events, upserting the entities it sends
==========================  ==========================================================

This module keeps every name the rest of the code base imports from it.
"""

from __future__ import annotations

from winstar_core.services.edge_base import NOT_CONFIGURED as NOT_CONFIGURED
from winstar_core.services.edge_base import EdgeBase
from winstar_core.services.edge_config import EdgeCloudConfig
from winstar_core.services.edge_config import log as log
from winstar_core.services.edge_downlinks import EdgeDownlinks
from winstar_core.services.edge_entities import EdgeEntities
from winstar_core.services.edge_entities import may_write as may_write
from winstar_core.services.edge_sync import MAX_SYNC_ID as MAX_SYNC_ID
from winstar_core.services.edge_sync import MISSING_PARTS_SHOWN as MISSING_PARTS_SHOWN
from winstar_core.services.edge_sync import SYNC_ID as SYNC_ID
from winstar_core.services.edge_sync import EdgeSync


class EdgeService(EdgeDownlinks, EdgeEntities, EdgeCloudConfig, EdgeSync, EdgeBase):
    """What an edge node can do, in one transaction (``EdgeService(session, platform)``).

    Its methods come from the parts listed in this module's docstring; each part documents the
    state of :class:`EdgeBase` it uses. A part builds only on the parts it names as bases."""
