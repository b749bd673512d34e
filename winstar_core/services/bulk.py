"""Bulk provisioning (``winstar entity import``): entities of one type read from JSON Lines,
every line checked before anything is written, then the entities, their assignments and their
``ADDED`` downlinks written set-based, in the caller's transaction (all or nothing).

The rows are exactly those that creating each entity (``CloudEntities.create_entity``) and
assigning it to each edge (``CloudAssignment.assign``) one by one write: the same checks
(``EntityStore.prepare``), version 1, one assignment row per entity and edge, and per edge one
``ADDED`` event per entity in file order, its body encoded by ``entity_state`` and numbered by the
transaction's :class:`~winstar_core.store.outbox.Outbox` (one flush: one counter update per edge,
one NOTIFY). A cloud create fires no plugin hook (``winstar_edge_entity_created`` is the rule for
an entity an *edge* created, applied to uplinks only), so an import fires none either.

Everything the import writes is held in memory until the transaction commits (the checked lines,
then the outbox's events and their rows): about 4 KB per device assigned to one edge (an import
of 25,000 peaked 90 MB above the command's own 66 MB). A file too large for that is to be cut
into several imports (each one all or nothing).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from winstar_core.entity_types import MAX_DATA_BYTES, shown
from winstar_core.errors import WinstarError
from winstar_core.services.constants import ADDED
from winstar_core.services.entities import entity_state
from winstar_core.services.ids import chunks
from winstar_core.store.models import Assignment, Edge, Entity, Tenant, now_ms
from winstar_core.store.outbox import OutboxEvent

if TYPE_CHECKING:
    from winstar_core.services.cloud import CloudService

#: entities per INSERT executemany (and per progress report). An executemany, not one INSERT of
#: many VALUES: psycopg pipelines its rows to PostgreSQL, which measured faster here than
#: insertmanyvalues' multi-row statements (SQLite runs it as one prepared statement in C)
WRITE_CHUNK = 1000
ENTITY = cast(sa.Table, Entity.__table__)
ASSIGNMENT = cast(sa.Table, Assignment.__table__)
#: the keys a line may hold
LINE_KEYS = ("name", "data")

#: what reports progress (a line of text), or None for silence
Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class ImportLine:
    """One checked line: the entity it creates (name cleaned, data validated, name scope)."""

    number: int
    name: str
    data: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: entities created, assignment rows written."""

    created: int
    assigned: int


#: the longest line an import reads: an entity's data (4 MiB) and room for its name and JSON
MAX_LINE_BYTES = MAX_DATA_BYTES + 64 * 1024


class ImportRefused(WinstarError):
    """Some lines (or ``--assign`` edges) are bad: nothing was written. ``problems``: one line
    each (``line 7: ...``), in file order."""

    def __init__(self, problems: Sequence[str], lines: int) -> None:
        self.problems = list(problems)
        self.lines = lines
        bad = len(self.problems)
        super().__init__(f"{bad} problem{'s' if bad != 1 else ''} in {lines} lines: nothing imported")


def read_json_line(raw: bytes) -> dict[str, Any] | None:
    """A line's JSON object (``{"name", "data"}``), None for a blank line; a :class:`WinstarError`
    saying what is wrong with it otherwise (not UTF-8, not JSON, not an object, another key)."""
    if len(raw) > MAX_LINE_BYTES:
        raise WinstarError(f"longer than {MAX_LINE_BYTES:,} bytes (an entity's data is at most 4 MiB)")
    try:
        # a byte-order mark (as some editors write one) opens a file, not a JSON text
        text = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise WinstarError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text, object_pairs_hook=_no_repeated_keys)
    except json.JSONDecodeError as exc:
        raise WinstarError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise WinstarError("its JSON nests too deeply to read") from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise WinstarError(f"cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(value, dict):
        raise WinstarError(f'not a JSON object ({{"name": ..., "data": {{...}}}}) but {_kind(value)}')
    unknown = sorted(k for k in value if k not in LINE_KEYS)
    if unknown:
        raise WinstarError(f'unknown key {shown(unknown[0])}: a line holds "name" and "data"')
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a repeated key would silently keep its last
    value (a name written twice, data overwritten)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise WinstarError(f"the key {shown(key)} appears twice in one object")
            seen.add(key)
    return value


def bounded_lines(source: Any) -> Iterable[bytes]:
    """The lines of a binary file, none held longer than :data:`MAX_LINE_BYTES` + 1 bytes (the
    rest of a longer line is read and dropped: the line is refused as too long, and the file is
    never held whole). Any other iterable of lines is taken as it is."""
    readline = getattr(source, "readline", None)
    if readline is None:
        yield from source
        return
    while line := readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := readline(1024 * 1024)) and not rest.endswith(b"\n"):
                pass
        yield line


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


@dataclass
class BulkImport:
    """An import of ``type_name`` entities into ``tenant``, assigned to ``edges``, in the
    transaction of ``cloud``. :meth:`check` the lines, then :meth:`write` them."""

    cloud: CloudService
    type_name: str
    tenant: Tenant
    edges: list[Edge] = field(default_factory=list)
    progress: Progress = None

    def check(self, lines: Iterable[bytes], problems: Sequence[str] = ()) -> list[ImportLine]:
        """Every line of ``lines`` (numbered from 1; blank ones skipped) checked as ``entity
        create`` checks its input, names unique within the file and free in the tenant. Raises
        :class:`ImportRefused` with every bad line (and ``problems`` found before, such as an
        unknown edge) if there is one; writes nothing."""
        etype = self.cloud.types.get(self.type_name)
        bad = list(problems)
        good: list[ImportLine] = []
        seen: dict[tuple[str, str], int] = {}  # (scope, name) -> line
        number = 0
        for number, raw in enumerate(bounded_lines(lines), start=1):
            try:
                value = read_json_line(raw)
                if value is None:
                    continue
                name, data = value.get("name"), value.get("data", {})
                if not isinstance(name, str):
                    raise WinstarError('"name" must be a string' if "name" in value else 'no "name"')
                if not isinstance(data, dict):
                    raise WinstarError(f'"data" must be a JSON object, not {_kind(data)}')
                name, clean, scope = self.cloud.entities.prepare(etype, name, data)
            except WinstarError as exc:
                bad.append(f"line {number}: {_one_line(exc)}")
                continue
            first = seen.setdefault((scope, name), number)
            if first != number:
                bad.append(f"line {number}: name {shown(name)} is already used on line {first}")
                continue
            good.append(ImportLine(number, name, clean, scope))
            if self.progress and number % 10_000 == 0:
                self.progress(f"checked {number:,} lines")
        bad += self._taken(good)
        if bad:
            raise ImportRefused(sorted(bad, key=_line_order), number)
        return good

    def _taken(self, good: list[ImportLine]) -> list[str]:
        """A line each for the names that entities of the tenant hold already."""
        by_scope: dict[str, dict[str, ImportLine]] = {}  # names are unique per scope in the file
        for line in good:
            by_scope.setdefault(line.scope, {})[line.name] = line
        out = []
        for scope, names in by_scope.items():
            for chunk in chunks(names):
                # every column of the unique index: a look-up per name, not a walk of the type
                stmt = sa.select(Entity.name).where(
                    Entity.tenant_id == self.tenant.id,
                    Entity.type == self.type_name,
                    Entity.name_scope == scope,
                    Entity.name.in_(chunk),
                )
                for name in self.cloud.session.scalars(stmt):
                    line = names[name]
                    within = f" (scope {scope!r})" if scope else ""
                    out.append(
                        f"line {line.number}: a {self.type_name} named {shown(name)}{within}"
                        " already exists in this tenant"
                    )
        return out

    def write(self, lines: Sequence[ImportLine]) -> ImportResult:
        """Insert the entities of checked ``lines``, assign each to every edge, and queue one
        ``ADDED`` per entity and edge; numbered and written by the outbox's flush."""
        session, types, outbox = self.cloud.session, self.cloud.types, self.cloud.outbox
        tenant_id, type_name = self.tenant.id, self.type_name
        now = now_ms()
        assigned = 0
        for start in range(0, len(lines), WRITE_CHUNK):
            rows = [
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant_id,
                    "customer_id": None,
                    "type": type_name,
                    "name": line.name,
                    "name_scope": line.scope,
                    "data": line.data,
                    "version": 1,
                    "origin_edge_id": None,
                    "created_time": now,
                    "updated_time": now,
                }
                for line in lines[start : start + WRITE_CHUNK]
            ]
            # Core INSERTs of plain rows (executemany): no ORM instance per entity
            session.execute(sa.insert(ENTITY), rows)
            if self.edges:
                links = [
                    {"edge_id": edge.id, "entity_id": r["id"], "created_time": now}
                    for r in rows
                    for edge in self.edges
                ]
                session.execute(sa.insert(ASSIGNMENT), links)
                assigned += len(links)
                for row in rows:
                    # the body `assign` writes for a fresh entity; entity_state reads the entity's
                    # columns, here those of its row (an ORM instance each would cost a third more)
                    entity = cast(Entity, SimpleNamespace(**row))
                    body = entity_state(entity, types).SerializeToString()
                    for edge in self.edges:
                        outbox.downlink(edge.id, OutboxEvent(tenant_id, type_name, ADDED, entity.id, body))
            if self.progress:
                self.progress(f"wrote {min(start + WRITE_CHUNK, len(lines)):,} of {len(lines):,} entities")
        if self.progress and self.edges:
            self.progress(f"queueing {len(lines) * len(self.edges):,} downlinks")
        outbox.flush(session)
        return ImportResult(created=len(lines), assigned=assigned)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _line_order(problem: str) -> tuple[int, int]:
    """``--assign`` problems first, then lines by number."""
    if problem.startswith("line "):
        return 1, int(problem[5:].split(":", 1)[0])
    return 0, 0


def find_edges(cloud: CloudService, refs: Sequence[str], tenant: Tenant) -> tuple[list[Edge], list[str]]:
    """The edges ``--assign`` names (in ``tenant``, each once) and a line per one that is not
    there (the import refuses, with the bad lines)."""
    edges: dict[uuid.UUID, Edge] = {}
    problems = []
    for ref in refs:
        try:
            edge = cloud.find_edge(ref, tenant)
        except WinstarError as exc:
            problems.append(f"--assign {ref}: {_one_line(exc)} in tenant {tenant.name!r}")
            continue
        edges.setdefault(edge.id, edge)
    return list(edges.values()), problems


def import_entities(
    cloud: CloudService,
    type_name: str,
    lines: Iterable[bytes],
    *,
    tenant_ref: str | None = None,
    assign: Sequence[str] = (),
    progress: Progress = None,
) -> ImportResult:
    """``winstar entity import``: check every line of ``lines`` (raw JSON Lines), refuse them all
    (:class:`ImportRefused`) if one is bad, else create the entities in the tenant and assign them
    to the ``assign`` edges, in ``cloud``'s transaction."""
    cloud.types.get(type_name)  # an unknown type: one line, before any line is read
    tenant = cloud.default_tenant(tenant_ref)
    edges, problems = find_edges(cloud, assign, tenant)
    job = BulkImport(cloud, type_name, tenant, edges, progress)
    return job.write(job.check(lines, problems))
