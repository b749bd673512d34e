"""The plugin system: entry points, blocking, broken plugins, registration rules, hookspec docs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
from marshmallow import Schema, fields

from winstar_core import EntityType, hookimpl
from winstar_core.errors import PluginError
from winstar_core.plugin import spec
from winstar_core.plugin.manager import make_plugin_manager

BUILTIN = {
    "device": "winstar-devices",
    "asset": "winstar-assets",
    "dashboard": "winstar-dashboards",
    "entity_group": "winstar-groups",
}


def winstar(*args, env=None, **kw):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "winstar_core", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        **kw,
    )


def test_builtin_plugins_load_through_the_entry_point_group():
    platform = make_plugin_manager()
    by_plugin = platform.types.by_plugin()
    dists = {p.name: p.distribution for p in platform.plugins}
    found = {t: dists[owner] for owner, types in by_plugin.items() for t in types}
    assert found == BUILTIN
    assert platform.failures == []


def test_cli_lists_plugins_and_a_disabled_one_is_absent(tmp_path):
    out = winstar("plugins", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = {t: p["distribution"] for p in json.loads(out.stdout) for t in p["entity_types"]}
    assert listed == BUILTIN

    env = {"WINSTAR_DISABLE_PLUGINS": "groups", "WINSTAR_DB": f"sqlite:///{tmp_path / 'c.db'}"}
    out = winstar("plugins", "list", "--json", env=env)
    assert "entity_group" not in {t for p in json.loads(out.stdout) for t in p["entity_types"]}
    assert winstar("group", "members", "G", env=env).returncode != 0  # its commands are gone too
    assert winstar("init", "cloud", env=env).returncode == 0
    assert winstar("tenant", "create", "Acme", env=env).returncode == 0
    made = winstar("entity", "create", "device", "d1", "--json", env=env)
    assert made.returncode == 0 and json.loads(made.stdout)["type"] == "device"
    refused = winstar("entity", "create", "entity_group", "G", env=env)
    assert refused.returncode == 1 and "unknown entity type 'entity_group'" in refused.stderr


def test_broken_third_party_plugin_is_reported_and_skipped(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[winstar]\nbroken = broken_plugin\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = winstar("plugins", "list", "--json", env=env)
    assert out.returncode == 0
    assert "plugin 'broken' failed to load" in out.stderr and "boom at import" in out.stderr
    assert "Traceback" not in out.stderr
    assert {t for p in json.loads(out.stdout) for t in p["entity_types"]} == set(BUILTIN)


class _S(Schema):
    x = fields.Integer(load_default=0)


def test_a_second_type_under_a_taken_wire_name_is_refused(make_platform):
    class Impostor(EntityType):
        name = "device"
        schema = _S

    class ImpostorPlugin:
        @hookimpl
        def winstar_register_entity_types(self, register):
            register.add(Impostor)

    with pytest.raises(
        PluginError,
        match="plugin 'ImpostorPlugin' registers entity type 'device', "
        "already registered by plugin 'devices'",
    ):
        make_platform(ImpostorPlugin())


def test_reserved_and_malformed_wire_names_are_refused(make_platform):
    for bad in ("_user", "Has Space", "UPPER"):
        T = type("T", (EntityType,), {"name": bad, "schema": _S})

        class P:
            @hookimpl
            def winstar_register_entity_types(self, register, T=T):
                register.add(T)

        with pytest.raises(PluginError, match="wire name"):
            make_platform(P(), entrypoints=False)


def test_inline_type_works_end_to_end_without_a_migration(make_platform, sqlite_url):
    from winstar_core.node import Node

    class Sensor(EntityType):
        name = "sensor"
        schema = _S

    class SensorPlugin:
        @hookimpl
        def winstar_register_entity_types(self, register):
            register.add(Sensor)

    node = Node(sqlite_url, platform=make_platform(SensorPlugin()))
    node.init_cloud()
    with node.cloud() as c:
        t = c.create_tenant("T")
        e, _ = c.create_edge("e", t)
        s = c.create_entity("sensor", "s1", t, {"x": 3})
        c.assign(e, s)
    with node.cloud() as c:
        assert [x.name for x in c.effective_entities(c.find_edge("e"))] == ["s1"]
    node.close()


def test_addhooks_lets_one_plugin_publish_hooks_another_implements(make_platform):
    class PublishedSpecs:
        @staticmethod
        @__import__("winstar_core.plugin", fromlist=["hookspec"]).hookspec
        def winstar_demo_extra(value):
            """:param value: anything"""

    class Publisher:
        @hookimpl
        def winstar_addhooks(self, pluginmanager):
            pluginmanager.add_hookspecs(PublishedSpecs)

    class Implementer:
        @hookimpl
        def winstar_demo_extra(self, value):
            return value * 2

    # the implementer comes first: the historic call still reaches the publisher registered later
    platform = make_platform(Implementer(), Publisher(), entrypoints=False)
    assert platform.hook.winstar_demo_extra(value=21) == [42]


def test_every_hookspec_is_documented():
    hooks = [f for name, f in inspect.getmembers(spec, inspect.isfunction) if name.startswith("winstar_")]
    assert {h.__name__ for h in hooks} == {
        "winstar_addhooks",
        "winstar_register_entity_types",
        "winstar_add_commands",
        "winstar_edge_entity_created",
    }
    for hook in hooks:
        doc = textwrap.dedent(hook.__doc__ or "")
        assert doc.strip(), hook.__name__
        for param in inspect.signature(hook).parameters:
            assert f":param {param}:" in doc, f"{hook.__name__} does not document {param}"
