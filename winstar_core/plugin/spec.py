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
    from winstar_core.plugin.api import EdgeCreation

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
        :mod:`winstar_core.cli.api` (``node_options``, ``current_node``, ``emit``) so that
        ``--db`` and ``--json`` behave like the core's commands.

    The return value is ignored.
    """


# -------------------------------------------------------------------------------------------------
# Cloud lifecycle
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def winstar_edge_entity_created(created: EdgeCreation) -> Any:
    """The edition's rule for an entity that an edge created and the cloud just stored.

    :param created: the edge, the new entity, the edition, and the operations a rule needs
        (:class:`winstar_core.plugin.api.EdgeCreation`: ``find_entity``, ``create_entity``,
        ``add_member``, ``assign``), inside the transaction that stores the entity.

    firstresult: the first non-None answer wins and the remaining implementations are skipped.
    Return any non-None value once the rule has placed the entity (assigned it to the edge,
    directly or through a group); return None to leave it to the next rule.

    Call order: implementations marked ``@hookimpl(trylast=True)`` run last; the built-in plugins
    mark theirs so (they are fallbacks), so a plain ``@hookimpl`` of yours runs before them and,
    by answering, overrides them. If no implementation answers, the core's default rule assigns
    the entity to the edge that created it (the CE behaviour): no edge loses what it created.
    A rule that raises refuses the edge's event (the uplink FAILS with the message).
    """
