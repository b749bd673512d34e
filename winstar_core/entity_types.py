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


#: how deeply objects and arrays may nest in an entity's data. Far more than any real entity
#: needs, and small enough that nothing which walks the data (a schema, ``json.dumps``, a
#: comparison of two values) can run out of stack on it
MAX_DATA_DEPTH = 64


def text_problem(value: str) -> str | None:
    """Why PostgreSQL (and the JSON on the wire) cannot hold the text ``value``, or None."""
    if "\x00" in value:
        return "the NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"a lone surrogate ({shown(value)} is not valid Unicode text)"
    return None


def shown(value: str, limit: int = 60) -> str:
    """``value`` as it appears in a one-line message: quoted, escaped, cut to ``limit`` characters."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def _too_deep() -> str:
    return f"objects or arrays nested more than {MAX_DATA_DEPTH} levels deep"


def _unstorable(value: Any) -> str | None:
    """Why PostgreSQL's JSONB (and the JSON on the wire) cannot hold ``value``, or None.

    Walks the data with a stack of its own, not Python's: data from a peer or a user may nest as
    deeply as it likes, and must get a refusal, not a RecursionError (or a crash)."""
    stack: list[tuple[Any, int]] = [(value, 0)]  # (value, how many containers hold it)
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            why = text_problem(item)
            if why:
                return why
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"a number JSON cannot write ({item})"
        elif isinstance(item, Mapping | list | tuple):
            if depth >= MAX_DATA_DEPTH:  # also ends a cycle (a plugin's data may have one)
                return _too_deep()
            if isinstance(item, Mapping):
                for k, v in item.items():
                    stack.append((k, depth + 1))
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item)
    return None


class _NotFinite(Exception):
    """A payload holds NaN, an Infinity or a number too large for a float."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999, or 400 digits: inf without any Infinity token
        raise _NotFinite
    return value


def _no_constant(_text: str) -> float:
    raise _NotFinite


#: JSON as json.loads reads it, but stopping at the first number that is not finite
_FINITE_JSON = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def _deeper_than_allowed(value: Any) -> bool:
    """Whether objects or arrays nest in ``value`` more than :data:`MAX_DATA_DEPTH` levels (no
    recursion: checked before anything that recurses, such as a marshmallow schema, sees it)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= MAX_DATA_DEPTH:
            return True
        # a scalar is told apart first: isinstance(v, Mapping) asks the ABC machinery, slowly
        stack.extend(
            (v, depth + 1)
            for v in children
            if not isinstance(v, _SCALARS) and isinstance(v, Mapping | list | tuple)
        )
    return False


#: what JSON's scalars are in Python (bool is an int)
_SCALARS = (str, int, float, type(None))


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

    # -- names -----------------------------------------------------------------------------------

    @classmethod
    def name_scope(cls, data: Mapping[str, Any]) -> str:
        """Within a tenant, an entity's name is unique among the entities of its type *and scope*.
        By default every entity of a type has the scope ``""`` (names unique per type); a type
        whose entities may share a name when they differ in some respect returns that respect
        here (entity groups: their member type, so ``[Edge] Plant 7 All`` exists once per member
        type). At most 64 characters; called with validated data, on every write."""
        return ""

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
        if _deeper_than_allowed(given):  # before the schema, which walks nested data recursively
            raise InvalidData(f"invalid {cls.name} data: it holds {_too_deep()}")
        try:
            loaded = cls.schema_instance().load(given)
        except marshmallow.ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else None
            raise InvalidData(f"invalid {cls.name} data: {_one_line(exc.messages)}", messages) from None
        if loaded == given:  # already canonical (a peer's payload, usually): dumping changes nothing
            return given
        return dict(cls.schema_instance().dump(loaded))

    @classmethod
    def check_storable(cls, data: Mapping[str, Any]) -> None:
        """Refuse data heavier than :data:`MAX_DATA_BYTES`, nested more than
        :data:`MAX_DATA_DEPTH` levels, or holding what PostgreSQL cannot store in JSON (see
        :func:`_unstorable`)."""
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
        """The data after a user's update (``winstar entity update --data``, a rule's change): by
        default, top-level keys of ``changes`` replace ``current``. Not called for a peer's state:
        an UPDATED from the edge that owns an entity (or from the cloud, on an edge) replaces its
        data as a whole, so both sides hold the same data whatever ``merge`` does.

        Whatever an override returns is validated again by the core (:meth:`validate`, then
        :meth:`check_storable`) before it is stored, so a ``merge`` that builds invalid data gets
        a refusal, never a stored entity; raising :class:`~winstar_core.errors.WinstarError`
        refuses the update with its message."""
        return cls.validate({**current, **changes})

    @classmethod
    def upgrade(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Data of this type's older schema version ``from_version`` (a peer with an older plugin
        sent it), as data of :attr:`schema_version`, before it is validated. The default returns
        it unchanged: right for a change that only added optional fields. Override it when a
        version renamed or reshaped something; raise
        :class:`~winstar_core.errors.InvalidData` for a version it cannot read (that event then
        fails with the message)."""
        return data

    @classmethod
    def serialize(cls, data: Mapping[str, Any]) -> bytes:
        """The payload that travels on the wire for this type."""
        return json.dumps(cls.schema_instance().dump(data), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: bytes) -> dict[str, Any]:
        """The JSON object of a payload produced by :meth:`serialize` (possibly by the peer, of
        any schema version), not validated yet. Override it together with :meth:`serialize` for
        another wire format.

        A peer's payload is anything at all: every way it can be wrong is an :class:`InvalidData`
        with a one-line reason (never a RecursionError from JSON nested 100,000 levels deep, nor
        a ValueError from a number of 5,000 digits), and what the store cannot hold (NUL
        characters, lone surrogates, NaN, deep nesting) is refused before any schema runs."""
        cls.check_size(len(payload))
        try:
            text = payload.decode() or "{}"
            try:
                raw = _FINITE_JSON.decode(text)
                plain = b"\\u" not in payload
            except _NotFinite:
                raw, plain = json.loads(text), False  # the full check below words the refusal
        except UnicodeDecodeError as exc:
            raise InvalidData(f"unreadable {cls.name} payload: not UTF-8 text ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise InvalidData(f"unreadable {cls.name} payload: {exc}") from None
        except RecursionError:
            raise InvalidData(
                f"unreadable {cls.name} payload: its JSON nests too deeply to read"
                f" (an entity's data may nest {MAX_DATA_DEPTH} levels)"
            ) from None
        except ValueError as exc:  # an integer too long to convert, say
            raise InvalidData(f"unreadable {cls.name} payload: {_one_line(str(exc))}") from None
        if not isinstance(raw, dict):
            raise InvalidData(f"unreadable {cls.name} payload: not an object")
        # plain: every number finite and no \\u escape, so no string can hold a NUL or a lone
        # surrogate (JSON text holds no raw control character, UTF-8 encodes no surrogate): its
        # depth is all _unstorable could find wrong, and the walk over every value is spared
        why = (_too_deep() if _deeper_than_allowed(raw) else None) if plain else _unstorable(raw)
        if why:
            raise InvalidData(f"{cls.name} data may not contain {why}")
        return raw

    @classmethod
    def deserialize(cls, payload: bytes) -> dict[str, Any]:
        """Read a payload of this type's current schema version: :meth:`decode`, then
        :meth:`validate`. A convenience for plugins and tests: the core reads a peer's payloads
        with :meth:`load_payload` (so override :meth:`decode`, not this, to change the format)."""
        return cls.validate(cls.decode(payload))

    @classmethod
    def load_payload(cls, payload: bytes, schema_version: int) -> dict[str, Any]:
        """Read a peer's payload written with ``schema_version`` (0: not said, the current one).
        Newer than this plugin knows: :class:`InvalidData` (a sender that knows the receiver's
        versions holds such an event instead of sending it). Older: :meth:`decode`, then
        :meth:`upgrade`, then :meth:`validate`. Called by the core; not meant to be overridden."""
        current = cls.schema_version
        if schema_version > current:
            raise InvalidData(
                f"{cls.name} payload has schema version {schema_version}; this side's plugin knows"
                f" version {current}: upgrade its plugin"
            )
        raw = cls.decode(payload)
        if 0 < schema_version < current:
            try:
                raw = cls.upgrade(raw, schema_version)
            except InvalidData:
                raise
            except Exception as exc:  # a plugin's upgrade that breaks: this event's refusal
                raise InvalidData(
                    f"{cls.name} data of schema version {schema_version} could not be upgraded to"
                    f" {current}: {type(exc).__name__}: {_one_line(str(exc))}"
                ) from None
            if not isinstance(raw, dict):
                raise InvalidData(f"{cls.name}.upgrade returned {type(raw).__name__}, not an object")
            why = _unstorable(raw)
            if why:
                raise InvalidData(f"{cls.name} data may not contain {why}")
        return cls.validate(raw)

    # -- containers ------------------------------------------------------------------------------

    @classmethod
    def accepts_member(cls, data: Mapping[str, Any], member_type: str) -> bool:
        """For a container: whether an entity of ``member_type`` may be one of its members."""
        return False


def _one_line(messages: Any, depth: int = 0) -> str:
    """A schema's error messages (nested dicts and lists of strings) as one line. Their nesting
    follows the data's, which :data:`MAX_DATA_DEPTH` bounds; the cut-off below bounds it even for
    a plugin's validator that nests its messages on its own."""
    if depth > MAX_DATA_DEPTH:
        return "..."
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {_one_line(v, depth + 1)}" for k, v in messages.items())
    if isinstance(messages, list):
        return ", ".join(_one_line(m, depth + 1) for m in messages)
    return " ".join(str(messages).split())


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

    def dependents(self, name: str) -> tuple[tuple[str, ...], bool]:
        """What may need an entity of type ``name`` to reach a peer first: the types that depend
        on it (directly or not), and whether a membership may name it (it can be a member: it is
        not a container). A type without a plugin here: every type, and memberships. The outbox's
        compaction keeps an entity's state before these (store/outbox.py)."""
        entity_type = self._types.get(name)
        if entity_type is None:
            return tuple(sorted(self._types)), True

        def needs(n: str, seen: frozenset[str]) -> bool:
            deps = self._types[n].depends_on if n in self._types else ()
            return any(d == name or (d not in seen and needs(d, seen | {d})) for d in deps)

        found = tuple(sorted(n for n in self._types if n != name and needs(n, frozenset({n}))))
        return found, not entity_type.container
