"""docs/plugins.md is the plugin authors' reference: everything they can use is in it.

Each list below is read from the code (the hookspecs' module, the classes, the test kit's module),
never written out here, so adding a hook, a member or a helper without documenting it fails. A
name is documented when it appears in backticks: a hook or a kit helper as `` `name` `` or
`` `name(...)` ``, a member of a class as `` `Owner.member` `` or `` `Owner.member(...)` ``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import winstar_core.testing as kit_module
from winstar_core import EntityType
from winstar_core.plugin import NAME, spec
from winstar_core.plugin.api import EdgeCreation, EdgeInfo, EntityInfo

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text(encoding="utf-8")


def documented(name: str) -> bool:
    """Whether ``name`` (``member`` or ``Owner.member``) appears in backticks, alone or called."""
    return re.search(rf"`{re.escape(name)}[`(]", TEXT) is not None


def hookspecs() -> dict[str, object]:
    return {
        name: fn for name, fn in vars(spec).items() if name.startswith("winstar_") and inspect.isfunction(fn)
    }


def public_members(cls: type) -> set[str]:
    """What an author can touch on ``cls``: its public attributes and methods, inherited ones and
    annotated class variables without a value included (a dataclass's fields, a Protocol's
    attributes), and the attributes its ``__init__`` sets on ``self``."""
    names = {n for n in dir(cls) if not n.startswith("_")}
    for klass in cls.__mro__:
        if klass is object:
            continue
        names |= {n for n in vars(klass).get("__annotations__", {}) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    init = vars(cls).get("__init__")
    if inspect.isfunction(init) and not dataclasses.is_dataclass(cls):  # a dataclass's has no source
        names |= set(re.findall(r"self\.([a-z]\w*)\s*[:=]", inspect.getsource(init)))
    return {n for n in names if not n.startswith("_")}


def kit_names() -> set[str]:
    """The test kit's public names: ``__all__``, which must hold everything public the module
    defines (fixtures, helpers, classes)."""
    return set(kit_module.__all__)


def kit_classes() -> list[type]:
    return [obj for name in sorted(kit_names()) if inspect.isclass(obj := getattr(kit_module, name))]


def test_the_lists_are_read_from_the_code():
    # guards against an introspection that silently finds nothing
    assert {"winstar_addhooks", "winstar_edge_entity_created"} <= set(hookspecs())
    assert {"name", "schema", "merge", "upgrade", "decode"} <= public_members(EntityType)
    assert {"edge", "entity", "edition", "assign"} <= public_members(EdgeCreation)
    assert {"cloud_node", "kit", "EventBuilder", "Kit"} <= kit_names()
    assert {"tenant_id", "next_seq", "added"} <= public_members(kit_module.EventBuilder)


def test_every_public_name_of_the_kit_is_in_its_all():
    defined = {
        name
        for name, obj in vars(kit_module).items()
        if not name.startswith(("_", "pytest_")) and getattr(obj, "__module__", None) == kit_module.__name__
    }
    assert defined - kit_names() == set(), "add them to winstar_core.testing.__all__ (and document them)"


@pytest.mark.parametrize("name", sorted(hookspecs()))
def test_every_hook_is_documented_with_its_contract(name):
    fn = hookspecs()[name]
    params = list(inspect.signature(fn).parameters)  # type: ignore[arg-type]
    heading = re.search(rf"^### `{name}\(([^)]*)\)`\s*$", TEXT, re.M)
    assert heading, f"docs/plugins.md has no heading ### `{name}(...)`"
    assert [p.strip() for p in heading.group(1).split(",") if p.strip()] == params
    section = TEXT[heading.end() :].split("\n#", 1)[0]
    for param in params:
        assert f"`{param}`" in section, f"{name}: argument {param!r} is not described"
    opts = getattr(fn, f"{NAME}_spec")
    for option in ("firstresult", "historic"):
        if opts.get(option):
            assert option in section, f"{name} is {option}: its section must say so"
    assert "**Called**" in section and "**Returns**" in section, f"{name}: when it is called, what it returns"


@pytest.mark.parametrize("owner", [EntityType, EdgeCreation, EdgeInfo, EntityInfo], ids=lambda c: c.__name__)
def test_every_member_of_what_plugins_get_is_documented(owner):
    missing = sorted(m for m in public_members(owner) if not documented(f"{owner.__name__}.{m}"))
    assert missing == [], f"docs/plugins.md does not document {owner.__name__}: {missing}"


def test_every_fixture_and_helper_of_the_kit_is_documented():
    missing = sorted(name for name in kit_names() if not documented(name))
    assert missing == [], f"docs/plugins.md does not document winstar_core.testing: {missing}"


@pytest.mark.parametrize("owner", kit_classes(), ids=lambda c: c.__name__)
def test_every_member_of_the_kit_s_classes_is_documented(owner):
    missing = sorted(m for m in public_members(owner) if not documented(f"{owner.__name__}.{m}"))
    assert missing == [], f"docs/plugins.md does not document {owner.__name__}: {missing}"
