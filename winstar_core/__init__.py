"""Winstar Edge core: event tables, gRPC transport, the assign/sync lifecycle, the plugin manager."""

from winstar_core.entity_types import EntityType, EntityTypeRegister
from winstar_core.plugin import hookimpl

__version__ = "0.1.0"
__all__ = ["EntityType", "EntityTypeRegister", "hookimpl", "__version__"]
