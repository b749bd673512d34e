"""The one factory that builds the plugin manager.

Order: hookspecs -> blocked names (``WINSTAR_DISABLE_PLUGINS``) -> entry points of the ``winstar``
group (built-in plugins are declared there too) -> extra plugins -> ``check_pending()``.
A plugin that fails to load is reported (name and error) and skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from winstar_core.entity_types import EntityTypeRegister
from winstar_core.errors import PluginError
from winstar_core.plugin import NAME, spec

DISABLE_ENV = "WINSTAR_DISABLE_PLUGINS"


@dataclass
class LoadedPlugin:
    name: str
    distribution: str | None
    version: str | None


@dataclass
class Platform:
    """A plugin manager plus what the core derived from it once (the entity types)."""

    pm: pluggy.PluginManager
    types: EntityTypeRegister
    plugins: list[LoadedPlugin] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def hook(self) -> Any:
        return self.pm.hook


def disabled_plugins() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {n.strip() for n in raw.replace(";", ",").split(",") if n.strip()}


def make_plugin_manager(
    *, load_entrypoints: bool = True, extra_plugins: tuple[tuple[str, object], ...] = ()
) -> Platform:
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(spec)
    pm.hook.winstar_addhooks.call_historic(kwargs={"pluginmanager": pm})
    for name in disabled_plugins():
        pm.set_blocked(name)

    loaded: list[LoadedPlugin] = []
    failures: list[tuple[str, str]] = []
    if load_entrypoints:
        for ep in sorted(entry_points(group=NAME), key=lambda e: e.name):
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not take the CLI down
                failures.append((ep.name, f"{type(exc).__name__}: {exc}"))
                continue
            dist = ep.dist
            loaded.append(LoadedPlugin(ep.name, dist.name if dist else None, dist.version if dist else None))
    for name, plugin in extra_plugins:
        if pm.is_blocked(name):
            continue
        pm.register(plugin, name=name)
        loaded.append(LoadedPlugin(name, None, None))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None

    register = EntityTypeRegister()
    for impl in pm.hook.winstar_register_entity_types.get_hookimpls():  # registration order
        try:
            impl.function(register=register._for_plugin(impl.plugin_name))
        except PluginError:
            raise
        except Exception as exc:
            failures.append((impl.plugin_name, f"{type(exc).__name__}: {exc}"))
    return Platform(pm=pm, types=register, plugins=loaded, failures=failures)
