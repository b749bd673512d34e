"""Bulk provisioning: `python -m bench import`.

    python -m bench import [--entities 20000] [--edges 1] [--cloud-db URL] [--json]

Writes ``--entities`` device lines (JSON Lines, as ``winstar entity import`` reads them) to a
temporary file, then imports them into a fresh cloud database (a new PostgreSQL database by
default) assigned to ``--edges`` edges, as the command does: the file read, every line checked,
the entities, assignments and ``ADDED`` downlinks written, the transaction committed. Timed from
opening the file to the commit, in this process (no interpreter start-up); the check and the
write are timed apart as well.

Printed beside the raw limit of the same run: the rows per second the same database takes in one
transaction through SQLAlchemy without Winstar (``raw_insert_rate``). An imported entity writes
1 + 2 × edges rows (entity, assignment, downlink per edge).
"""

from __future__ import annotations

import argparse
import json
import os
import time
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
from winstar_core.services.bulk import BulkImport, find_edges
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
    progress(f"importing {args.entities:,} devices")
    t0 = time.perf_counter()
    with path.open("rb") as fh, node.cloud() as cloud:
        tenant = cloud.default_tenant(None)
        edges, problems = find_edges(cloud, [f"edge-{i}" for i in range(args.edges)], tenant)
        job = BulkImport(cloud, "device", tenant, edges)
        lines = job.check(fh, problems)
        t1 = time.perf_counter()
        done = job.write(lines)
        t2 = time.perf_counter()
    total = time.perf_counter() - t0
    assert count(node, Entity) == args.entities and count(node, Assignment) == done.assigned
    assert count(node, EdgeEvent) == args.entities * args.edges
    node.close()
    rows = args.entities * (1 + 2 * args.edges)
    rate = args.entities / total
    return {
        "entities": args.entities,
        "edges": args.edges,
        "database": sa.engine.make_url(cloud_url).get_backend_name(),
        "seconds": round(total, 3),
        "check_seconds": round(t1 - t0, 3),
        "write_seconds": round(t2 - t1, 3),
        "commit_seconds": round(total - (t2 - t0), 3),
        "entities_per_s": round(rate),
        "rows_per_s": round(rows / total),
        "raw_insert_rows_per_s": round(raw),
        "ratio_entities_to_raw": round(rate / raw, 3),
        "load": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench import")
    ap.add_argument("--entities", type=int, default=20_000, help="device lines to import")
    ap.add_argument("--edges", type=int, default=1, help="edges every entity is assigned to (--assign)")
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
        f"  {result['entities_per_s']:,} entities/s in {result['seconds']} s (check {result['check_seconds']} s,"
        f" write {result['write_seconds']} s, commit {result['commit_seconds']} s);"
        f" {result['rows_per_s']:,} rows/s written"
    )
    print(
        f"  raw insert rate of the same database: {result['raw_insert_rows_per_s']:,} rows/s;"
        f" entities/s ÷ raw rows/s = {result['ratio_entities_to_raw']}"
    )
