"""The state every part of :class:`~winstar_core.services.edge.EdgeService` shares: the
transaction's session, the platform, the outbox its local changes write to, and the node's
configuration (what the cloud said this edge is) as read in the transaction."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.errors import WinstarError
from winstar_core.plugin.manager import Platform
from winstar_core.services.batch import BatchCache
from winstar_core.services.config import get_config
from winstar_core.services.entities import EntityStore
from winstar_core.services.ids import parse_uuid
from winstar_core.store.models import NodeConfig
from winstar_core.store.outbox import Outbox

NOT_CONFIGURED = (
    "this edge has not connected to its cloud yet, so it does not know its users and edition: "
    "run `winstar run` once the cloud is reachable"
)

#: the configuration keys read together on the first look (the rest, such as a sync's id lists,
#: are read when asked)
_HOT_KEYS = ("edge_id", "tenant_id", "edition")


class EdgeBase:
    """The edge service's state, for one transaction.

    - ``session``: the caller's transaction; every part reads and writes through it;
    - ``platform``, ``types``: the plugin manager and its entity types;
    - ``entities``: the :class:`EntityStore` (entity look-ups and plain writes);
    - ``outbox``: the ``cloud_event`` rows the transaction's local changes imply;
    - ``batch``: a batch of downlinks' look-ups (:class:`BatchCache`), None outside a batch;
    - ``_config``: the node's configuration as read in this transaction (:meth:`config`);
    - ``_new``: rows of entities new to this edge, waiting for one multi-row INSERT.
    """

    def __init__(self, session: Session, platform: Platform) -> None:
        self.session = session
        self.platform = platform
        self.types = platform.types
        self.entities = EntityStore(session, self.types)
        self.outbox = Outbox(dependents=self.types.dependents)  # compaction (store/outbox.py)
        self.batch: BatchCache | None = None
        #: the node's configuration as read in this transaction (read once: every upsert checks it)
        self._config: dict[str, Any] = {}
        #: rows of entities new to this edge, inserted together by :meth:`write_new` (a backlog is
        #: mostly these: one multi-row INSERT instead of an ORM object each)
        self._new: dict[uuid.UUID, dict[str, Any]] = {}

    def config(self, key: str) -> Any:
        """The node configuration's value for ``key``, read once per transaction."""
        if not self._config:  # what every upsert asks, in one statement
            found = self.session.execute(
                sa.select(NodeConfig.key, NodeConfig.value).where(NodeConfig.key.in_(_HOT_KEYS))
            ).all()
            self._config.update({k: None for k in _HOT_KEYS} | {k: v for k, v in found})
        if key not in self._config:
            self._config[key] = get_config(self.session, key)
        return self._config[key]

    @property
    def edge_id(self) -> uuid.UUID | None:
        """This edge's id as the cloud configured it (None before the first Welcome)."""
        return self._config_uuid("edge_id")

    @property
    def tenant_id(self) -> uuid.UUID | None:
        """This edge's tenant id (None before the first Welcome)."""
        return self._config_uuid("tenant_id")

    def _config_uuid(self, key: str) -> uuid.UUID | None:
        """A configured id, parsed once per transaction (every upsert asks for it)."""
        parsed = f"{key}:uuid"
        if parsed not in self._config:
            self._config[parsed] = parse_uuid(self.config(key))
        value: uuid.UUID | None = self._config[parsed]
        return value

    @property
    def edition(self) -> str | None:
        """The cloud's edition, ``ce`` or ``pe`` (None before the first Welcome)."""
        edition: str | None = self.config("edition")
        return edition

    def _require_configured(self) -> tuple[uuid.UUID, uuid.UUID, str]:
        edge_id, tenant_id, edition = self.edge_id, self.tenant_id, self.edition
        if edge_id is None or tenant_id is None or edition is None:
            raise WinstarError(NOT_CONFIGURED)
        return edge_id, tenant_id, edition
