"""The cloud's apply of edge-created devices, without the link: ``python -m bench uplink-apply``.

    python -m bench uplink-apply [--devices 10000] [--batch 500] [--pg-server URL] [--json]

On a new PostgreSQL database, for each edition (CE: the core's rule assigns each device to its
edge; PE: the groups plugin's rule puts it in ``[Edge] NAME All``, assigned to the edge), the
devices an edge created offline are applied as the link's receiver applies them
(``uplink_receiver(...).apply_batch``), in batches of ``--batch`` events, in this process. Prints
the wall time, this process's CPU time (what the apply costs the node, apart from PostgreSQL's
own work and the box's other load), and the raw insert rate of the same database in the same run.
The link's share (the edge's fetch and encoding, gRPC) is measured by ``python -m bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.__main__ import DEFAULT_PG, raw_insert_rate, run_on_a_new_database
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.store.models import Entity
from winstar_core.testing import EventBuilder
from winstar_core.transport.server import uplink_receiver


def run(args: argparse.Namespace, url: str, _tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "scenario": "uplink-apply",
        "devices": args.devices,
        "batch": args.batch,
        "raw_rows_per_s": round(raw_insert_rate(url, 20_000)),
    }
    platform = make_plugin_manager()
    device = platform.types.get("device")
    for edition in ("ce", "pe"):
        # one database, one tenant per edition (a cloud's edition is fixed at init: two clouds)
        db_url = url if edition == "ce" else _second_database(url)
        cloud = Node(db_url, platform=platform)
        try:
            cloud.init_cloud(edition)
            with cloud.cloud() as c:
                tenant = c.create_tenant(f"Bench {edition}")
                edge, _ = c.create_edge(f"edge-{edition}", tenant)
                tenant_id, edge_id = tenant.id, edge.id
            builder = EventBuilder(tenant_id, origin_edge_id=edge_id, platform=platform)
            # what an edge sends: data its own validation filled in (an access token each)
            events = [
                builder.added("device", f"dev-{i:06}", device.validate({})) for i in range(args.devices)
            ]
            receiver = uplink_receiver(cloud, edge_id)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(0, len(events), args.batch):
                ack, _ = receiver.apply_batch(events[i : i + args.batch])
                if not all(r.ok for r in ack.results):
                    raise SystemExit(f"refused: {next(r.error for r in ack.results if not r.ok)}")
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            with cloud.db.read() as conn:
                stored = conn.scalar(
                    sa.select(sa.func.count()).select_from(Entity).where(Entity.type == "device")
                )
            assert stored == args.devices, stored
            result[edition] = {
                "seconds": round(wall, 3),
                "per_s": round(args.devices / wall),
                "cpu_s": round(cpu, 3),
                "per_cpu_s": round(args.devices / cpu),
                "load": os.getloadavg()[0],
            }
        finally:
            cloud.close()
            if edition != "ce":
                _drop_second_database(url)
    return result


def _second_database(url: str) -> str:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"{sa.engine.make_url(url).database}_pe"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


def _drop_second_database(url: str) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}_pe" WITH (FORCE)'))
    admin.dispose()


def report(r: dict[str, Any]) -> None:
    print(f"raw limit: the cloud database inserts {r['raw_rows_per_s']:,} rows/s (one transaction)")
    for edition in ("ce", "pe"):
        e = r[edition]
        print(
            f"{edition}: {r['devices']:,} edge-created devices applied in {e['seconds']} s = {e['per_s']:,}/s"
            f" ({e['cpu_s']} s of this process's CPU = {e['per_cpu_s']:,} per CPU-second; load {e['load']:.2f});"
            f" {e['per_s'] / r['raw_rows_per_s']:.3f} of the raw insert rate (target >= 8,000/s)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench uplink-apply")
    ap.add_argument("--devices", type=int, default=10_000, help="edge-created devices to apply")
    ap.add_argument("--batch", type=int, default=500, help="events per batch (the link's default)")
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_on_a_new_database(args, "uplink-apply", run)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
