"""Flat as tables grow: `python -m bench growth`.

    python -m bench growth [--rows 5000000] [--edges 1000] [--drain 20000] [--pg-server URL] [--json]

A fresh PostgreSQL database (``init_cloud``) with ``--edges`` edges (their rows written directly,
in one INSERT: they never connect, so they need no real secret) and two real ones. The cloud runs
as a `winstar run --listen` process and each real edge as a `winstar run` process on its own
SQLite database, over real gRPC on loopback.

1. **Empty table**: ``--drain`` assets imported and assigned to the first real edge while it is
   offline (`winstar entity import`'s service: one ``ADDED`` downlink each), then the edge
   started; the drain rate is timed on the sender's clock (first to last ``delivered_time`` of
   the backlog), as ``python -m bench`` does.
2. **Big table**: ``edge_event`` filled with ``--rows`` rows spread over the ``--edges`` edges,
   set-based on the server (``INSERT ... SELECT generate_series``, 1,000,000 rows a statement):
   seqs 1..rows/edges per edge, interleaved in time over the last 6 days (inside the default
   retention of 7 days: the cloud's pruning leaves them alone), bodies of about 200 bytes, every one DELIVERED but the last 1 % of every tenth edge's stream (PENDING); the
   ``stream_counter`` rows to match; then ``VACUUM (ANALYZE)`` (what autovacuum does to a table
   that big). The same drain, of the second real edge (a fresh stream on the big table).
3. **Plans**: ``EXPLAIN (ANALYZE, BUFFERS)`` of the hot statements on the big table, captured
   from the core's own code as it runs them (an SQLAlchemy ``before_cursor_execute`` hook), the
   writes inside transactions rolled back: the senders' gathered fetch and mark
   (transport/batched.py), one stream's fetch, mark and pending count (transport/link.py), the
   pending counts and the polling fallback (services/cloud_edges.py, nodes.py), the Downlinks view
   (`winstar edge downlinks`, newest first, with and without a status filter), `winstar edge
   show`'s counts, an update's outbox flush with its compaction (store/outbox.py, rolled back)
   and the prune (services/retention.py). A plan with a ``Seq Scan on edge_event`` is flagged.

Printed beside the raw insert rate of the same database in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.__main__ import (
    DEFAULT_PG,
    Processes,
    progress,
    raw_insert_rate,
    run_on_a_new_database,
)
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.services import retention
from winstar_core.services.bulk import import_entities
from winstar_core.services.instances import event_counts
from winstar_core.services.nodes import pending_edges
from winstar_core.store.models import DELIVERED, PENDING, Edge, EdgeEvent, Entity, now_ms
from winstar_core.transport import batched
from winstar_core.transport.inprocess import wait_for
from winstar_core.transport.limits import BATCH_SIZE, MAX_MESSAGE_BYTES
from winstar_core.transport.link import OutboxStream
from winstar_core.transport.pb import sync_pb2 as pb

#: the target: a drain on the big table at least 1 / 1.5 of the rate on the empty one
TARGET_RATIO = 1.5
FILL_CHUNK = 1_000_000
DAY_MS = 86_400_000
#: the rows' age: from now back this many days, inside the default retention (7 days)
SPREAD_DAYS = 6

# -- edges, backlogs, drains (shared by bench/memory.py and bench/compaction.py) --------------------


def import_assigned(
    cloud: Node, type_name: str, prefix: str, n: int, edge: str, chunk: int = 20_000
) -> float:
    """``n`` entities imported and assigned to ``edge`` (one ``ADDED`` downlink each), ``chunk`` a
    transaction, as `winstar entity import --assign EDGE` does; returns the seconds."""
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        progress(f"importing {type_name}s {start:,}..{min(start + chunk, n):,} of {n:,}")
        with cloud.cloud() as c:
            lines = (
                json.dumps({"name": f"{prefix}-{i:07}", "data": {"label": f"{prefix} {i}"}}).encode()
                for i in range(start, min(start + chunk, n))
            )
            import_entities(c, type_name, lines, assign=[edge])
    return time.perf_counter() - t0


def edge_count(cloud: Node, edge_id: uuid.UUID, *where: Any) -> int:
    with cloud.db.read() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count()).select_from(EdgeEvent).where(EdgeEvent.edge_id == edge_id, *where)
            )
            or 0
        )


def connect_once(link: Processes, edge: Node) -> None:
    """Start the edge until its first connect brought the users and the edition, then stop it."""
    link.start_edge()

    def configured() -> bool:
        with edge.edge() as ed:
            return ed.edition is not None

    wait_for(configured, timeout=120, interval=0.05, what="the edge's first connect")
    link.stop_edge()


def drain_edge(
    link: Processes, cloud: Node, edge_id: uuid.UUID, type_name: str, since: int = 0, timeout: float = 1800
) -> tuple[int, float, float]:
    """Start the edge and wait until its stream has nothing PENDING. Returns the events of
    ``type_name`` delivered after ``since`` (ms), the seconds from their first to their last
    acknowledgement (the sender's clock) and the seconds from the edge's start."""
    t0 = time.perf_counter()
    link.start_edge()
    wait_for(
        lambda: edge_count(cloud, edge_id, EdgeEvent.status == PENDING) == 0,
        timeout=timeout,
        interval=0.05,
        what="the drain",
    )
    wall_s = time.perf_counter() - t0
    with cloud.db.read() as conn:
        n, first, last = conn.execute(
            sa.select(
                sa.func.count(), sa.func.min(EdgeEvent.delivered_time), sa.func.max(EdgeEvent.delivered_time)
            ).where(
                EdgeEvent.edge_id == edge_id,
                EdgeEvent.status == DELIVERED,
                EdgeEvent.type == type_name,
                EdgeEvent.delivered_time >= since,
            )
        ).one()
    return int(n), max((last or 0) - (first or 0), 1) / 1000, wall_s


def real_edge(cloud: Node, name: str, tmp: Path) -> tuple[uuid.UUID, Node, Processes]:
    """A real edge ``name`` (``create_edge``), its SQLite database and a cloud process for it."""
    with cloud.cloud() as c:
        row, secret = c.create_edge(name, c.find_tenant("Bench"))
        edge_id, key = row.id, row.routing_key
    folder = tmp / name
    folder.mkdir()
    edge = Node(f"sqlite:///{folder / 'edge.db'}", platform=cloud.platform)
    link = Processes(cloud, edge, folder)
    edge.init_edge(link.cloud_addr, key, secret)
    return edge_id, edge, link


def new_cloud(url: str) -> Node:
    cloud = Node(url, platform=make_plugin_manager())
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        t = c.create_tenant("Bench")
        c.create_user("admin@bench.io", t, "TENANT_ADMIN")
    return cloud


# -- the big table ----------------------------------------------------------------------------------


def add_filler_edges(cloud: Node, n: int) -> list[uuid.UUID]:
    """``n`` edges written directly in one INSERT (no scrypt: they never connect)."""
    now = now_ms()
    with cloud.cloud() as c:
        tenant_id = c.find_tenant("Bench").id
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "customer_id": None,
            "name": f"filler-{i:05}",
            "routing_key": str(uuid.uuid4()),
            "secret_salt": b"\0" * 16,
            "secret_hash": b"\0" * 64,
            "connected": False,
            "sync_requested": False,
            "instance_reset": False,
            "created_time": now,
        }
        for i in range(n)
    ]
    with cloud.db.begin() as s:
        s.execute(sa.insert(Edge.__table__), rows)
    return [r["id"] for r in rows]


_FILL = sa.text(
    """
    INSERT INTO edge_event (id, edge_id, seq, created_time, tenant_id, type, action, entity_id, body,
                            status, delivered_time, error, retried_as)
    SELECT gen_random_uuid(), f.id, g.i / :n + 1, :t0 + g.i * :step, :tenant, 'asset',
           CASE WHEN g.i % 7 = 0 THEN 'ADDED' ELSE 'UPDATED' END,
           CAST(md5('entity' || (f.k * 100 + g.i % 100)) AS uuid),
           convert_to('{"label":"Sensor ' || g.i || '","temperature":' || (g.i % 97)
                      || ',"serial":"' || repeat(md5(g.i::text), 4) || '"}', 'UTF8'),
           CASE WHEN f.k % 10 = 0 AND g.i / :n + 1 > :per_edge - :pend THEN 'PENDING' ELSE 'DELIVERED' END,
           CASE WHEN f.k % 10 = 0 AND g.i / :n + 1 > :per_edge - :pend THEN NULL
                ELSE :t0 + g.i * :step + 200 END,
           NULL, NULL
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g(i)
    JOIN bench_fill AS f ON f.k = g.i % :n
    """
)


def fill(cloud: Node, edge_ids: Sequence[uuid.UUID], rows: int) -> dict[str, Any]:
    """``rows`` events spread over ``edge_ids`` (see the module's text), their counters, VACUUM
    (ANALYZE). Returns the figures of the fill."""
    n = len(edge_ids)
    per_edge = rows // n
    total = per_edge * n
    pend = max(1, per_edge // 100)
    with cloud.cloud() as c:
        tenant_id = c.find_tenant("Bench").id
    t0 = now_ms() - SPREAD_DAYS * DAY_MS
    step = max(1, SPREAD_DAYS * DAY_MS // max(total, 1) - 1)
    started = time.perf_counter()
    with cloud.db.engine.connect() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE bench_fill (k integer PRIMARY KEY, id uuid NOT NULL)"))
        conn.execute(
            sa.text("INSERT INTO bench_fill (k, id) VALUES (:k, :id)"),
            [{"k": k, "id": e} for k, e in enumerate(edge_ids)],
        )
        conn.commit()
        for lo in range(0, total, FILL_CHUNK):
            hi = min(lo + FILL_CHUNK, total) - 1
            progress(f"filling edge_event: rows {lo:,}..{hi + 1:,} of {total:,}")
            conn.execute(
                _FILL,
                {
                    "n": n,
                    "t0": t0,
                    "step": step,
                    "tenant": tenant_id,
                    "per_edge": per_edge,
                    "pend": pend,
                    "lo": lo,
                    "hi": hi,
                },
            )
            conn.commit()
        conn.execute(
            sa.text(
                """
                INSERT INTO stream_counter (stream, last_seq)
                SELECT 'downlink:' || id, :per_edge FROM bench_fill
                ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq
                """
            ),
            {"per_edge": per_edge},
        )
        conn.execute(sa.text("DROP TABLE bench_fill"))
        conn.commit()
    insert_s = time.perf_counter() - started
    progress("VACUUM (ANALYZE) edge_event")
    v0 = time.perf_counter()
    auto = cloud.db.engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as conn:
        conn.execute(sa.text("VACUUM (ANALYZE) edge_event"))
        conn.execute(sa.text("ANALYZE stream_counter"))
        conn.execute(sa.text("ANALYZE edge"))
        size = conn.scalar(sa.text("SELECT pg_total_relation_size('edge_event')"))
        heap = conn.scalar(sa.text("SELECT pg_relation_size('edge_event')"))
    pending = n // 10 * pend if n >= 10 else pend
    return {
        "rows": total,
        "edges": n,
        "per_edge": per_edge,
        "pending_rows": pending,
        "insert_s": round(insert_s, 1),
        "insert_rows_per_s": round(total / max(insert_s, 1e-9)),
        "vacuum_analyze_s": round(time.perf_counter() - v0, 1),
        "table_mb": round(heap / 2**20),
        "table_with_indexes_mb": round(size / 2**20),
    }


# -- plans ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and parameters) the core sends to ``engine`` inside the block."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if not statement.lstrip().upper().startswith("EXPLAIN"):
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", hook)


@contextlib.contextmanager
def rolled_back(cloud: Node) -> Iterator[Session]:
    """A session whose transaction is rolled back at the end, whatever it wrote."""
    with cloud.db.engine.connect() as conn:
        trans = conn.begin()
        try:
            yield Session(bind=conn)
        finally:
            trans.rollback()


def explain(cloud: Node, statement: str, parameters: Any) -> list[str]:
    with cloud.db.engine.connect() as conn:
        trans = conn.begin()
        try:
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
        finally:
            trans.rollback()
    return [r[0] for r in rows]


def one_line(statement: str, limit: int = 160) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(line: str, limit: int = 240) -> str:
    """A plan line cut short (an Index Cond may list a thousand ids)."""
    return line if len(line) <= limit else line[: limit - 5] + " ...)"


def plans(cloud: Node, drained: uuid.UUID, filler: Sequence[uuid.UUID]) -> list[dict[str, Any]]:
    """Each hot statement of the core, as it runs it on the big table, and its plan."""
    db = cloud.db
    pending_edges_ids = [e for k, e in enumerate(filler) if k % 10 == 0][:4]
    with db.read() as conn:
        firsts = dict(
            conn.execute(
                sa.select(EdgeEvent.edge_id, sa.func.min(EdgeEvent.seq))
                .where(EdgeEvent.edge_id.in_(pending_edges_ids), EdgeEvent.status == PENDING)
                .group_by(EdgeEvent.edge_id)
            ).all()
        )
        busy = pending_edges_ids[0]
        quiet = filler[1] if len(filler) > 1 else filler[0]
        busy_seqs = list(
            conn.scalars(
                sa.select(EdgeEvent.seq)
                .where(EdgeEvent.edge_id == busy, EdgeEvent.status == PENDING)
                .order_by(EdgeEvent.seq)
                .limit(BATCH_SIZE)
            )
        )
        gathered_marks = [
            (e, s)
            for e in pending_edges_ids
            for s in conn.scalars(
                sa.select(EdgeEvent.seq)
                .where(EdgeEvent.edge_id == e, EdgeEvent.status == PENDING)
                .order_by(EdgeEvent.seq)
                .limit(100)
            )
        ]
    edge_of = {e: OutboxStream(db, e) for e in pending_edges_ids}
    cases: list[tuple[str, Callable[[], Any]]] = []

    def gathered_fetch() -> None:
        batched.fetch_many(
            db,
            [(edge_of[e], firsts[e] - 1, BATCH_SIZE, MAX_MESSAGE_BYTES // 2) for e in pending_edges_ids],
        )

    def gathered_mark() -> None:
        with rolled_back(cloud) as s:
            s.execute(
                batched._DELIVERED_PG,
                {
                    "delivered": DELIVERED,
                    "pending": PENDING,
                    "now": now_ms(),
                    "edges": [e for e, _ in gathered_marks],
                    "seqs": [s_ for _, s_ in gathered_marks],
                },
            )

    def stream_mark() -> None:
        with rolled_back(cloud) as s:
            OutboxStream(db, busy).acknowledge_in(
                s, [pb.EventResult(seq=q, ok=True) for q in busy_seqs], now_ms()
            )

    def with_cloud(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with cloud.cloud() as c:
                return fn(c)

        return run

    def edge_row(c: Any, e: uuid.UUID) -> Edge:
        return c.session.get(Edge, e)

    def compacting_write() -> None:  # one update, its outbox flushed, then rolled back
        with contextlib.suppress(_RolledBack), cloud.cloud() as c:
            entity = c.session.scalars(
                sa.select(Entity).where(Entity.type == "asset", Entity.name.like("drain-big-%")).limit(1)
            ).one()
            c.update_entity(entity, data={"label": "compacted"})
            c.outbox.flush(c.session)
            raise _RolledBack

    cases = [
        (f"gathered fetch, {len(pending_edges_ids)} streams (batched._FETCH_PG)", gathered_fetch),
        (
            f"gathered mark delivered, {len(gathered_marks)} events of {len(pending_edges_ids)} streams"
            " (batched._DELIVERED_PG)",
            gathered_mark,
        ),
        (
            "one stream's fetch (OutboxStream.fetch)",
            lambda: OutboxStream(db, busy).fetch(busy_seqs[0] - 1, BATCH_SIZE),
        ),
        (f"one stream's mark delivered, {len(busy_seqs)} events (acknowledge_in)", stream_mark),
        ("one stream's pending count (OutboxStream.pending)", lambda: OutboxStream(db, busy).pending()),
        (
            "pending counts of every edge (CloudEdges.pending_counts)",
            with_cloud(lambda c: c.pending_counts()),
        ),
        (
            f"polling fallback, {len(filler)} edges (nodes.pending_edges)",
            with_cloud(lambda c: pending_edges(c.session, list(filler))),
        ),
        (
            "Downlinks view: edge downlinks --status failed (newest first)",
            with_cloud(lambda c: c.downlinks(edge_row(c, quiet), "failed", None)),
        ),
        (
            "Downlinks view: edge downlinks --status pending (newest first)",
            with_cloud(lambda c: c.downlinks(edge_row(c, busy), "pending", None)),
        ),
        (
            "Downlinks view: edge downlinks --status delivered --limit 100 (newest first)",
            with_cloud(lambda c: c.downlinks(edge_row(c, quiet), "delivered", 100)),
        ),
        (
            "Downlinks view: edge downlinks --limit 100 (newest first, no filter)",
            with_cloud(lambda c: c.downlinks(edge_row(c, drained), None, 100)),
        ),
        ("an update's outbox flush: its INSERT and compaction (outbox._COMPACT)", compacting_write),
        (
            "edge show's counts (instances.event_counts)",
            with_cloud(lambda c: event_counts(c.session, edge_row(c, quiet))),
        ),
        (
            f"prune: oldest_prunable, 7 days' retention (nothing that old), batch {retention.PRUNE_BATCH}",
            lambda: _prune_select(cloud, 7),
        ),
        (
            f"prune: oldest_prunable, 3 days' retention (half the table to prune), batch {retention.PRUNE_BATCH}",
            lambda: _prune_select(cloud, 3),
        ),
        ("prune: its DELETE, 3 days' retention (retention._delete_batch)", lambda: _prune_delete(cloud, 3)),
    ]
    out = []
    for label, run in cases:
        progress(f"plan: {label}")
        with captured(db.engine) as seen:
            run()
        stmts = [
            (st, p)
            for st, p in seen
            if "edge_event" in st and not st.lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))
        ]
        done: set[str] = set()
        for statement, parameters in stmts:
            if statement in done:  # the same statement again (another chunk of ids)
                continue
            done.add(statement)
            lines = [clip(ln) for ln in explain(cloud, statement, parameters)]
            out.append(
                {
                    "query": label,
                    "statement": one_line(statement),
                    "plan": lines,
                    "seq_scan_on_edge_event": any("Seq Scan on edge_event" in ln for ln in lines),
                }
            )
    return out


class _RolledBack(Exception):
    pass


def _prune_select(cloud: Node, days: int) -> None:
    with cloud.db.read() as conn:
        conn.execute(
            retention.oldest_prunable(EdgeEvent, now_ms() - days * DAY_MS, retention.PRUNE_BATCH)
        ).all()


def _prune_delete(cloud: Node, days: int) -> None:
    with rolled_back(cloud) as s:
        retention._delete_batch(s, EdgeEvent, now_ms() - days * DAY_MS, retention.PRUNE_BATCH)


# -- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, cloud_url: str, tmp: Path) -> dict[str, Any]:
    raw = raw_insert_rate(cloud_url, 20_000)
    cloud = new_cloud(cloud_url)
    result: dict[str, Any] = {"raw_insert_rows_per_s": round(raw)}
    links: list[Processes] = []
    edges: list[Node] = []
    try:
        progress(f"adding {args.edges:,} edges")
        t0 = time.perf_counter()
        filler = add_filler_edges(cloud, args.edges)
        result["filler_edges_s"] = round(time.perf_counter() - t0, 2)

        def one_drain(name: str) -> dict[str, Any]:
            edge_id, edge, link = real_edge(cloud, name, tmp)
            links.append(link)
            edges.append(edge)
            connect_once(link, edge)
            since = now_ms()
            write_s = import_assigned(cloud, "asset", name, args.drain, name)
            progress(f"draining {args.drain:,} events to {name}")
            n, drain_s, wall_s = drain_edge(link, cloud, edge_id, "asset", since)
            link.stop_edge()
            link.close()
            with edge.db.read() as conn:
                held = int(conn.scalar(sa.select(sa.func.count()).select_from(Entity)) or 0)
            assert n == held == args.drain, (n, held, args.drain)
            with cloud.db.read() as conn:
                table = int(conn.scalar(sa.select(sa.func.count()).select_from(EdgeEvent)) or 0)
            return {
                "edge": name,
                "edge_id": edge_id,
                "events": n,
                "table_rows": table,
                "drain_s": round(drain_s, 3),
                "events_per_s": round(n / drain_s),
                "wall_s": round(wall_s, 2),
                "write_s": round(write_s, 2),
                "load": round(os.getloadavg()[0], 2),
            }

        result["empty"] = one_drain("drain-empty")
        progress(f"filling edge_event with {args.rows:,} rows over {args.edges:,} edges")
        result["fill"] = fill(cloud, filler, args.rows)
        result["big"] = one_drain("drain-big")
        result["ratio_empty_to_big"] = round(
            result["empty"]["events_per_s"] / result["big"]["events_per_s"], 3
        )
        result["target_ratio"] = TARGET_RATIO
        result["met"] = result["ratio_empty_to_big"] <= TARGET_RATIO
        result["plans"] = plans(cloud, result["big"]["edge_id"], filler)
        for key in ("empty", "big"):
            result[key]["edge_id"] = str(result[key]["edge_id"])
    finally:
        for link in links:
            with contextlib.suppress(Exception):
                if link.edge_proc is not None and link.edge_proc.poll() is None:
                    link.stop_edge()
            with contextlib.suppress(Exception):
                if link.cloud.poll() is None:
                    link.close()
        for edge in edges:
            edge.close()
        cloud.close()
    return result


def report(r: dict[str, Any]) -> None:
    f, e, b = r["fill"], r["empty"], r["big"]
    print(
        f"Flat as tables grow: cloud on PostgreSQL, cloud and edges as `winstar run` processes, real gRPC"
        f" ({os.cpu_count()} cores)"
    )
    print(f"  raw limit: the cloud database inserts {r['raw_insert_rows_per_s']:,} rows/s (one transaction)")
    print(
        f"  empty table ({e['table_rows']:,} rows after it): {e['events']:,} events drained in {e['drain_s']} s"
        f" = {e['events_per_s']:,} events/s ({e['wall_s']} s from the edge's start; load {e['load']})"
    )
    print(
        f"  filled: {f['rows']:,} rows over {f['edges']:,} edges ({f['per_edge']:,} each, {f['pending_rows']:,}"
        f" PENDING) in {f['insert_s']} s = {f['insert_rows_per_s']:,} rows/s set-based, VACUUM (ANALYZE)"
        f" {f['vacuum_analyze_s']} s; edge_event {f['table_mb']:,} MB, {f['table_with_indexes_mb']:,} MB"
        " with its indexes"
    )
    print(
        f"  big table ({b['table_rows']:,} rows after it): {b['events']:,} events drained in {b['drain_s']} s"
        f" = {b['events_per_s']:,} events/s ({b['wall_s']} s from the edge's start; load {b['load']})"
    )
    print(
        f"  empty ÷ big = {r['ratio_empty_to_big']} (target ≤ {r['target_ratio']}):"
        f" {'met' if r['met'] else 'MISSED'};"
        f" big-table drain ÷ raw insert rate = {b['events_per_s'] / r['raw_insert_rows_per_s']:.3f}"
    )
    print("  plans on the big table (EXPLAIN (ANALYZE, BUFFERS)):")
    for p in r["plans"]:
        flag = "   <-- Seq Scan on edge_event" if p["seq_scan_on_edge_event"] else ""
        print(f"\n  * {p['query']}{flag}\n    {p['statement']}")
        for line in p["plan"]:
            print(f"      {line}")
    seq = [p["query"] for p in r["plans"] if p["seq_scan_on_edge_event"]]
    print(f"\n  Seq Scan on edge_event in: {', '.join(seq) if seq else 'none'}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench growth")
    ap.add_argument("--rows", type=int, default=5_000_000, help="rows to fill edge_event with")
    ap.add_argument("--edges", type=int, default=1000, help="edges the rows are spread over")
    ap.add_argument("--drain", type=int, default=20_000, help="events drained to one edge, each time")
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_on_a_new_database(args, "growth", run)
    result["load"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
