"""Bulk provisioning: `python -m bench import`.

    python -m bench import [--entities 20000] [--edges 1] [--workers N] [--cloud-db URL] [--json]

Writes ``--entities`` device lines (JSON Lines, as ``winstar entity import`` reads them) to a
temporary file, then imports them into a fresh cloud database (a new PostgreSQL database by
default) assigned to ``--edges`` edges, as the command does: the file read, every line checked
(by worker processes, one per core, as the command decides; ``--workers 0``: in this process),
the entities and assignments written chunk by chunk as the lines are checked, the ``ADDED``
downlinks last, the transaction committed. Timed from opening the file to the commit, in this
process (no interpreter start-up); the downlinks and the commit are timed apart as well.

For scale, the same lines are then checked (and their bodies encoded) in this one process alone,
nothing written: the work the import shares among its processes (``check_one_process_seconds``).

Printed beside the raw limit of the same run: the rows per second the same database takes in one
transaction through SQLAlchemy without Winstar (``raw_insert_rate``). An imported entity writes
1 + 2 × edges rows (entity, assignment, downlink per edge).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from bench.__main__ import (
    DEFAULT_PG,
    count,
    progress,
    raw_insert_rate,
    run_on_a_new_database,
)
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.services import bulk, bulk_lines
from winstar_core.services.bulk import BulkImport, find_edges
from winstar_core.services.bulk_lines import LineCheck, bounded_lines
from winstar_core.store.models import Assignment, EdgeEvent, Entity


def write_lines(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            line = {
                "name": f"sensor-{i:07}",
                "data": {
                    "label": f"Sensor {i}",
                    "device_profile": "thermometer",
                    "additional_info": {"row": i},
                },
            }
            fh.write(json.dumps(line) + "\n")


def run(args: argparse.Namespace, cloud_url: str, tmp: Path) -> dict[str, object]:
    raw = raw_insert_rate(cloud_url, args.entities)
    node = Node(cloud_url, platform=make_plugin_manager())
    node.init_cloud("ce")
    with node.cloud() as c:
        tenant = c.create_tenant("Acme")
        for i in range(args.edges):
            c.create_edge(f"edge-{i}", tenant)
    path = tmp / "devices.jsonl"
    write_lines(path, args.entities)
    if args.workers is not None:
        bulk_lines.worker_count = lambda: args.workers
    downlinks = _timed(bulk, "write_new_downlinks")
    progress(f"importing {args.entities:,} devices")
    t0 = time.perf_counter()
    with path.open("rb") as fh, node.cloud() as cloud:
        tenant = cloud.default_tenant(None)
        edges, problems = find_edges(cloud, [f"edge-{i}" for i in range(args.edges)], tenant)
        job = BulkImport(cloud, "device", tenant, edges)
        done = job.run(fh, problems)
        t1 = time.perf_counter()
    total = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the check alone
    assert count(node, Entity) == args.entities and count(node, Assignment) == done.assigned
    assert count(node, EdgeEvent) == args.entities * args.edges
    progress("checking the same lines in one process")
    alone = check_alone(node, path, args.edges > 0)
    node.close()
    rows = args.entities * (1 + 2 * args.edges)
    rate = args.entities / total
    return {
        "entities": args.entities,
        "edges": args.edges,
        "database": sa.engine.make_url(cloud_url).get_backend_name(),
        "workers": job.workers,
        "seconds": round(total, 3),
        "downlinks_seconds": round(downlinks[0], 3),
        "commit_seconds": round(total - (t1 - t0), 3),
        "check_one_process_seconds": round(alone, 3),
        "entities_per_s": round(rate),
        "rows_per_s": round(rows / total),
        "raw_insert_rows_per_s": round(raw),
        "ratio_entities_to_raw": round(rate / raw, 3),
        "max_rss_mb": round(rss_mb),
        "load": os.getloadavg()[0],
    }


def _timed(module: object, name: str) -> list[float]:
    """Wrap ``module.name`` to add the seconds of its calls to the list returned."""
    spent = [0.0]
    real = getattr(module, name)

    def timed(*args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    setattr(module, name, timed)
    return spent


def check_alone(node: Node, path: Path, bodies: bool) -> float:
    """Seconds to check every line of ``path`` (and encode its body) in this process, no write."""
    with path.open("rb") as fh, node.cloud() as cloud:
        types, postgres = cloud.types, cloud.session.get_bind().dialect.name == "postgresql"
        check = LineCheck(cloud.entities.prepare, types.get("device"), types, uuid.uuid4(), bodies, postgres)
        raws = list(bounded_lines(fh))
        t0 = time.perf_counter()
        check.chunk(1, raws)
        return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench import")
    ap.add_argument("--entities", type=int, default=20_000, help="device lines to import")
    ap.add_argument("--edges", type=int, default=1, help="edges every entity is assigned to (--assign)")
    ap.add_argument(
        "--workers", type=int, default=None, help="processes checking lines (default: one per core)"
    )
    ap.add_argument(
        "--cloud-db", default=None, help="cloud database URL (default: a new PostgreSQL database)"
    )
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_on_a_new_database(args, "import", run, sqlite_fallback=True)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"import of {result['entities']:,} devices, assigned to {result['edges']} edge(s), cloud on"
        f" {result['database']} (load average {result['load']:.2f}, {os.cpu_count()} cores)"
    )
    print(
        f"  {result['entities_per_s']:,} entities/s in {result['seconds']} s, lines checked by"
        f" {result['workers'] or 'this'} process{'es' if result['workers'] else ''} (downlinks"
        f" {result['downlinks_seconds']} s, commit {result['commit_seconds']} s);"
        f" {result['rows_per_s']:,} rows/s written; peak RSS {result['max_rss_mb']} MB (this process)"
    )
    print(
        f"  checking the same lines in one process, nothing written: {result['check_one_process_seconds']} s"
    )
    print(
        f"  raw insert rate of the same database: {result['raw_insert_rows_per_s']:,} rows/s;"
        f" entities/s ÷ raw rows/s = {result['ratio_entities_to_raw']}"
    )
