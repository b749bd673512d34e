"""Hook specifications: the contract between the core and entity-type plugins.

Every hook is prefixed ``winstar_`` and is called by the core with keyword arguments only.
Plugins implement them with ``@winstar_core.hookimpl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from winstar_core.plugin import hookspec

if TYPE_CHECKING:
    import click
    import pluggy

    from winstar_core.entity_types import EntityTypeRegister
    from winstar_core.services.cloud import CloudService
    from winstar_core.store.models import Edge, Entity

# -------------------------------------------------------------------------------------------------
# Initialization
# -------------------------------------------------------------------------------------------------


@hookspec(historic=True)
def winstar_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Register hook specifications that a plugin publishes for other plugins.

    :param pluginmanager: the Winstar plugin manager; call ``pluginmanager.add_hookspecs(module)``.

    Historic: a plugin registered after the call still receives it, so load order does not matter.
    """


# -------------------------------------------------------------------------------------------------
# Entity types
# -------------------------------------------------------------------------------------------------


@hookspec
def winstar_register_entity_types(register: EntityTypeRegister) -> None:
    """Register the entity types this plugin provides.

    :param register: call ``register.add(MyType)`` with a subclass of
        :class:`winstar_core.entity_types.EntityType`. A wire name that another plugin already
        registered is refused with :class:`winstar_core.errors.PluginError`.

    Called once per plugin manager, for every plugin; the return value is ignored.
    """


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------


@hookspec
def winstar_add_commands(cli: click.Group) -> None:
    """Contribute commands (or groups of commands) to the ``winstar`` command line.

    :param cli: the root click group; call ``cli.add_command(...)``. Use the helpers of
        :mod:`winstar_core.cli.api` (``node_command``, ``emit``) so that ``--db`` and ``--json``
        behave like the core's commands.

    The return value is ignored.
    """


# -------------------------------------------------------------------------------------------------
# Cloud lifecycle
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def winstar_edge_entity_created(cloud: CloudService, edge: Edge, entity: Entity, edition: str) -> Any:
    """Apply the edition's rule to an entity that an edge created and the cloud just stored.

    :param cloud: the cloud service, inside the transaction that stores the entity; use its
        methods (``assign``, ``create_entity``, ``add_member``…) so that every change writes its
        downlink events in that same transaction.
    :param edge: the edge that created the entity.
    :param entity: the new entity, already stored in the cloud with the edge's id for it.
    :param edition: ``"ce"`` or ``"pe"``.

    firstresult: the first non-None answer wins and the remaining implementations are skipped.
    Return any non-None value once the rule is applied (for example, the entity was assigned to the
    edge directly, or through a group). If no plugin answers, the entity stays in the cloud
    unassigned.
    """
