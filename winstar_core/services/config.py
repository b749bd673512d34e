"""The node's key/value configuration (``node_config``): read and write one key."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from winstar_core.store.models import NodeConfig


def get_config(session: Session, key: str, default: Any = None) -> Any:
    """The value stored under ``key``, ``default`` if there is none."""
    row = session.get(NodeConfig, key)
    return default if row is None else row.value


def set_config(session: Session, key: str, value: Any) -> None:
    """Store ``value`` under ``key`` (in the caller's transaction)."""
    row = session.get(NodeConfig, key)
    if row is None:
        session.add(NodeConfig(key=key, value=value))
    else:
        row.value = value
