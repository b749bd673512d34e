"""What an entity type is, and the register that plugins add theirs to.

The core never names a concrete type: everything it needs to know about one is on its class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import marshmallow

from winstar_core.errors import InvalidData, NotFound, PluginError

_SCHEMAS: dict[type, marshmallow.Schema] = {}


def _unstorable(value: Any) -> str | None:
    """Why PostgreSQL's JSONB (and the JSON on the wire) cannot hold ``value``, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "the NUL character (\\u0000)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"a lone surrogate ({value!r} is not valid Unicode text)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"a number JSON cannot write ({value})"
    if isinstance(value, Mapping):
        for k, v in value.items():
            why = _unstorable(k) or _unstorable(v)
            if why:
                return why
    elif isinstance(value, list | tuple):
        for v in value:
            why = _unstorable(v)
            if why:
                return why
    return None


#: the most an entity's data may weigh, as compact JSON: well inside one message of the link
#: (16 MiB), so every change of an entity can travel
MAX_DATA_BYTES = 4 * 1024 * 1024


class EntityType:
    """Base class for an entity type. Subclass it, set the class attributes, register the class
    through ``winstar_register_entity_types``.
    """

    #: stable wire name, used on the command line, in the database and on the wire
    name: ClassVar[str]
    #: validates and serializes the entity's ``data``
    schema: ClassVar[type[marshmallow.Schema]]
    #: bumped whenever the schema changes incompatibly; announced to the peer at connect
    schema_version: ClassVar[int] = 1
    #: whether an edge may create entities of this type locally
    creatable_on_edge: ClassVar[bool] = False
    #: wire names of the types that must reach an edge before this one
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: resource named by permissions (``RESOURCE:OPERATION``); defaults to the upper-cased name
    permission_resource: ClassVar[str | None] = None
    #: whether entities of this type contain other entities (assigning one assigns its members)
    container: ClassVar[bool] = False

    # -- data ------------------------------------------------------------------------------------

    @classmethod
    def schema_instance(cls) -> marshmallow.Schema:
        """One schema object per type (building one per call costs more than validating)."""
        cached = _SCHEMAS.get(cls)
        if cached is None or type(cached) is not cls.schema:
            cached = _SCHEMAS[cls] = cls.schema()
        return cached

    @classmethod
    def resource(cls) -> str:
        return cls.permission_resource or cls.name.upper()

    @classmethod
    def validate(cls, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate user or peer input and return the data to store (defaults filled in)."""
        given = dict(data or {})
        try:
            loaded = cls.schema_instance().load(given)
        except marshmallow.ValidationError as exc:
            raise InvalidData(f"invalid {cls.name} data: {_one_line(exc.messages)}") from None
        if loaded == given:  # already canonical (a peer's payload, usually): dumping changes nothing
            return given
        return dict(cls.schema_instance().dump(loaded))

    @classmethod
    def check_storable(cls, data: Mapping[str, Any]) -> None:
        """Refuse data heavier than :data:`MAX_DATA_BYTES` or holding what PostgreSQL cannot
        store in JSON (see :func:`_unstorable`)."""
        why = _unstorable(data)
        if why:
            raise InvalidData(f"{cls.name} data may not contain {why}")
        cls.check_size(len(json.dumps(data, separators=(",", ":"), default=str).encode()))

    @classmethod
    def check_size(cls, size: int) -> None:
        """Refuse data of ``size`` bytes (as compact JSON, or a peer's payload) over the limit."""
        if size > MAX_DATA_BYTES:
            raise InvalidData(
                f"{cls.name} data of {size:,} bytes is larger than the {MAX_DATA_BYTES:,} an entity may hold"
            )

    @classmethod
    def merge(cls, current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        """The data after an update: by default, top-level keys of ``changes`` replace ``current``."""
        return cls.validate({**current, **changes})

    @classmethod
    def serialize(cls, data: Mapping[str, Any]) -> bytes:
        """The payload that travels on the wire for this type."""
        return json.dumps(cls.schema_instance().dump(data), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def deserialize(cls, payload: bytes) -> dict[str, Any]:
        """Read a payload produced by :meth:`serialize` (possibly by the peer), validating it."""
        cls.check_size(len(payload))
        try:
            raw = json.loads(payload.decode() or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidData(f"unreadable {cls.name} payload: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidData(f"unreadable {cls.name} payload: not an object")
        return cls.validate(raw)

    # -- containers ------------------------------------------------------------------------------

    @classmethod
    def accepts_member(cls, data: Mapping[str, Any], member_type: str) -> bool:
        """For a container: whether an entity of ``member_type`` may be one of its members."""
        return False


def _one_line(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {_one_line(v)}" for k, v in messages.items())
    if isinstance(messages, list):
        return ", ".join(_one_line(m) for m in messages)
    return str(messages)


class EntityTypeRegister:
    """Collects entity types from plugins; refuses a wire name registered twice."""

    def __init__(self) -> None:
        self._types: dict[str, type[EntityType]] = {}
        self._owner: dict[str, str] = {}
        self._current_plugin = "?"

    def _for_plugin(self, plugin_name: str) -> EntityTypeRegister:
        self._current_plugin = plugin_name
        return self

    def add(self, entity_type: type[EntityType]) -> None:
        if not (isinstance(entity_type, type) and issubclass(entity_type, EntityType)):
            raise PluginError(
                f"plugin {self._current_plugin!r} registered {entity_type!r}, not an EntityType"
            )
        name = getattr(entity_type, "name", None)
        if not name or not isinstance(name, str):
            raise PluginError(
                f"plugin {self._current_plugin!r}: entity type {entity_type!r} has no wire name"
            )
        if name.startswith("_") or not name.replace("_", "").isalnum() or name != name.lower():
            raise PluginError(
                f"plugin {self._current_plugin!r}: wire name {name!r} must be lower-case letters, digits and "
                "underscores, not starting with an underscore (reserved for the core)"
            )
        if name in self._types:
            raise PluginError(
                f"plugin {self._current_plugin!r} registers entity type {name!r}, "
                f"already registered by plugin {self._owner[name]!r}"
            )
        self._types[name] = entity_type
        self._owner[name] = self._current_plugin

    def owner(self, name: str) -> str:
        return self._owner[name]

    def get(self, name: str) -> type[EntityType]:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types)) or "none"
            raise NotFound(f"unknown entity type {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[type[EntityType]]:
        return iter(self._types.values())

    def names(self) -> list[str]:
        return sorted(self._types)

    def by_plugin(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, owner in self._owner.items():
            out.setdefault(owner, []).append(name)
        return out

    def rank(self, name: str) -> int:
        """Dependency depth: a type is sent after every type it depends on (lower rank first)."""
        seen: set[str] = set()

        def depth(n: str) -> int:
            if n in seen or n not in self._types:
                return 0
            seen.add(n)
            deps: Iterable[str] = self._types[n].depends_on
            d = 1 + max((depth(x) for x in deps), default=-1)
            seen.discard(n)
            return d

        return depth(name)
