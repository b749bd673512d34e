"""Bulk provisioning (``winstar entity import``): entities of one type read from JSON Lines,
every line checked, and the entities, their assignments and their ``ADDED`` downlinks written
set-based, in the caller's transaction (all or nothing).

The rows are exactly those that creating each entity (``CloudEntities.create_entity``) and
assigning it to each edge (``CloudAssignment.assign``) one by one write: the same checks
(``EntityStore.prepare``), version 1, one assignment row per entity and edge, and per edge one
``ADDED`` event per entity in file order, its body encoded by ``entity_state`` and numbered from
the edge's counter row (``write_new_downlinks`` in store/outbox.py: one statement per edge, one
NOTIFY; no compaction, which a new entity's first event has nothing to supersede). A cloud create
fires no plugin hook (``winstar_edge_entity_created`` is the rule for an entity an *edge*
created, applied to uplinks only), so an import fires none either.

The lines come in chunks, checked (services/bulk_lines.py: by worker processes, one per core,
when there is more than one chunk). Each chunk's names are looked up among the tenant's and its
entities and assignments written (PostgreSQL: ``COPY`` on the transaction's own connection;
SQLite: an executemany) while the workers check the next chunks; the downlinks go last, once
every line is known good. A bad line stops the writing (the rest is still checked: every bad line
is named) and what was written is rolled back to a savepoint taken before the first chunk, so a
refusal leaves the caller's transaction as it was. A failure while writing is an exception, which
ends the transaction.

Held in memory until the end: each entity's id and downlink body (one ``bytes`` for all its
edges, about 300 bytes for a device) and the names seen (a repeat within the file is refused),
about 0.8 KB per entity whatever the number of edges (an import of 100,000 devices assigned to one
edge peaked 82 MB above the command's own 74 MB; of 25,000, 22 MB), and at most two chunks per
worker (each at most ``CHUNK_LINES`` lines or about ``CHUNK_BYTES``). A worker is a forked copy of
the command, sharing its pages, and holds one chunk at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa

from winstar_core.entity_types import shown
from winstar_core.errors import WinstarError
from winstar_core.services.bulk_lines import ImportLine, LineCheck, checked_chunks, one_line
from winstar_core.services.constants import ADDED
from winstar_core.services.ids import chunks
from winstar_core.store.models import Assignment, Edge, Entity, Tenant, now_ms
from winstar_core.store.outbox import OutboxEvent, copy_rows, write_new_downlinks

if TYPE_CHECKING:
    from winstar_core.services.cloud import CloudService

ENTITY = cast(sa.Table, Entity.__table__)
ASSIGNMENT = cast(sa.Table, Assignment.__table__)
ENTITY_COLUMNS = (
    "id", "tenant_id", "customer_id", "type", "name", "name_scope", "data", "version",
    "origin_edge_id", "created_time", "updated_time",
)  # fmt: skip
#: the names of ``names`` that the tenant's entities of a type and scope hold
_TAKEN = sa.select(Entity.name).where(
    Entity.tenant_id == sa.bindparam("tenant"),
    Entity.type == sa.bindparam("type"),
    Entity.name_scope == sa.bindparam("scope"),
    Entity.name.in_(sa.bindparam("names", expanding=True)),
)
#: the same on PostgreSQL: probing the unique index per name, which the planner does not choose for
#: ``name IN (...)`` on an entity table it believes small (new, or filled by this import)
_TAKEN_PG = sa.text(
    """
    SELECT n.name FROM unnest(CAST(:names AS text[])) AS n(name) CROSS JOIN LATERAL (
        SELECT 1 FROM entity AS e WHERE e.tenant_id = :tenant AND e.type = :type
        AND e.name_scope = :scope AND e.name = n.name LIMIT 1
    ) AS hit
    """
)
#: what reports progress (a line of text), or None for silence
Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: entities created, assignment rows written."""

    created: int
    assigned: int


class ImportRefused(WinstarError):
    """Some lines (or ``--assign`` edges) are bad: nothing was written. ``problems``: one line
    each (``line 7: ...``), in file order."""

    def __init__(self, problems: Sequence[str], lines: int) -> None:
        self.problems = list(problems)
        self.lines = lines
        bad = len(self.problems)
        super().__init__(f"{bad} problem{'s' if bad != 1 else ''} in {lines} lines: nothing imported")


@dataclass
class BulkImport:
    """An import of ``type_name`` entities into ``tenant``, assigned to ``edges``, in the
    transaction of ``cloud``: :meth:`run` it on the lines. ``workers``: how many processes
    checked the lines (0: this one), once it ran."""

    cloud: CloudService
    type_name: str
    tenant: Tenant
    edges: list[Edge] = field(default_factory=list)
    progress: Progress = None
    workers: int = 0

    def run(self, lines: Iterable[bytes], problems: Sequence[str] = ()) -> ImportResult:
        """Check every line of ``lines`` (numbered from 1; blank ones skipped) as ``entity
        create`` checks its input, names unique within the file and free in the tenant, writing
        the entities and their assignments as their chunks pass, then queue one ``ADDED`` per
        entity and edge. Raises :class:`ImportRefused` with every bad line (and ``problems``
        found before, such as an unknown edge) if there is one, having written nothing."""
        session = self.cloud.session
        check = LineCheck(
            self.cloud.entities.prepare,
            self.cloud.types.get(self.type_name),
            self.cloud.types,
            self.tenant.id,
            bool(self.edges),
            session.get_bind().dialect.name == "postgresql",
        )
        bad, seen = list(problems), dict[tuple[str, str], int]()  # (scope, name) -> line
        events: list[OutboxEvent] = []
        number = created = 0
        saved, now = None, now_ms()
        with closing(checked_chunks(lines, check)) as checked:
            for lines_ok, lines_bad, number, self.workers in checked:
                bad += lines_bad
                good = []
                for line in lines_ok:
                    first = seen.setdefault((line.scope, line.name), line.number)
                    if first != line.number:
                        bad.append(
                            f"line {line.number}: name {shown(line.name)} is already used on line {first}"
                        )
                    else:
                        good.append(line)
                bad += self._taken(good)
                if not bad and good:
                    saved = saved or session.begin_nested()  # what a refusal rolls back
                    self._write(good, now)
                    events += (OutboxEvent(self.tenant.id, self.type_name, ADDED, x.id, x.body) for x in good)
                    created += len(good)
                if self.progress:
                    self.progress(f"checked {number:,} lines, wrote {created:,} entities")
        if bad:
            if saved is not None:
                saved.rollback()
            raise ImportRefused(sorted(bad, key=_line_order), number)
        if self.edges and events:
            if self.progress:
                self.progress(f"queueing {len(events) * len(self.edges):,} downlinks")
            self.cloud.outbox.flush(session)  # the transaction's own events go first in their streams
            write_new_downlinks(session, {edge.id: events for edge in self.edges})
        if saved is not None:
            saved.commit()
        return ImportResult(created=created, assigned=created * len(self.edges))

    def _taken(self, good: list[ImportLine]) -> list[str]:
        """A line each for the names that entities of the tenant hold already: a look-up of each
        name along the unique index (PostgreSQL: one probe per name, whatever the planner thinks
        of a table this import is filling)."""
        by_scope: dict[str, dict[str, ImportLine]] = {}  # names are unique per scope in the file
        for line in good:
            by_scope.setdefault(line.scope, {})[line.name] = line
        session, out = self.cloud.session, []
        postgres = session.get_bind().dialect.name == "postgresql"
        for scope, names in by_scope.items():
            for chunk in chunks(names):
                where = {"tenant": self.tenant.id, "type": self.type_name, "scope": scope, "names": chunk}
                for name in session.scalars(_TAKEN_PG if postgres else _TAKEN, where):
                    within = f" (scope {scope!r})" if scope else ""
                    out.append(
                        f"line {names[name].number}: a {self.type_name} named {shown(name)}{within}"
                        " already exists in this tenant"
                    )
        return out

    def _write(self, good: list[ImportLine], now: int) -> None:
        """The entities of checked lines and their assignments (COPY on PostgreSQL)."""
        session, tenant_id, type_name = self.cloud.session, self.tenant.id, self.type_name
        copy_rows(
            session,
            ENTITY,
            ENTITY_COLUMNS,
            ((x.id, tenant_id, None, type_name, x.name, x.scope, x.data, 1, None, now, now) for x in good),
        )
        if self.edges:
            links = ((edge.id, x.id, now) for x in good for edge in self.edges)
            copy_rows(session, ASSIGNMENT, ("edge_id", "entity_id", "created_time"), links)


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
            problems.append(f"--assign {ref}: {one_line(exc)} in tenant {tenant.name!r}")
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
    return BulkImport(cloud, type_name, tenant, edges, progress).run(lines, problems)
