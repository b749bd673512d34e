"""Sync Edge by digest: `python -m bench resync` (and `python -m bench full-sync`).

    python -m bench resync [--entities 20000] [--cloud-db URL] [--processes] [--json]
    python -m bench full-sync [...]     (the second sync is a full one, for comparison)

A fresh cloud database (a new PostgreSQL database by default) with one edge over real gRPC on
loopback (cloud and edge in this process, on one event loop, sharing one interpreter lock;
``--processes``: two `winstar run` processes, as deployed): ``--entities`` devices imported
and assigned to the edge; their own ADDED downlinks are dropped, so the edge's **first sync**
alone brings it everything (the digest of an empty edge: every bucket differs). Its first connect
starts it (a new box); the benchmark requests one at once, which runs when that one is over, so
the first figure (request to done) holds an in-sync sync too: the digest sync's own seconds (its
digest queued to its last end delivered, the cloud's clock) are printed beside it. Then a **Sync
Edge of the in-sync edge**: its seconds (from the request's commit to its last event delivered,
as ``winstar edge show`` reports it) and its bytes (the bodies the sync queued both ways) against
the first sync's. ``full-sync``: the second sync is the full one (``run_sync``: the whole state
again), to compare with.

Printed beside the raw insert rate of the same database in the same run (rows per second in one
transaction through SQLAlchemy, without Winstar).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.__main__ import (
    DEFAULT_PG,
    InProcess,
    Processes,
    progress,
    raw_insert_rate,
    run_on_a_new_database,
)
from bench.growth import import_assigned
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.store.models import EdgeEvent, Entity
from winstar_core.transport.inprocess import wait_for
from winstar_core.transport.pb import sync_pb2 as pb


def outcome(cloud: Node) -> dict[str, Any]:
    with cloud.cloud() as c:
        return c.sync_outcome(c.find_edge("edge"))


def timed_sync(cloud: Node, full: bool) -> tuple[float, dict[str, Any]]:
    """Request a sync (``full``: queue a full one at once) and wait for its outcome."""
    t0 = time.perf_counter()
    with cloud.cloud() as c:
        edge = c.find_edge("edge")
        if full:
            c.run_sync(edge)
        else:
            c.request_sync(edge)
    wait_for(
        lambda: outcome(cloud)["state"] in ("done", "failed"), timeout=600, interval=0.005, what="the sync"
    )
    return time.perf_counter() - t0, outcome(cloud)


def configured(edge: Node) -> bool:
    with edge.edge() as ed:
        return ed.edition is not None


def first_digest_sync_s(cloud: Node, edge_id: uuid.UUID) -> tuple[float, float, float]:
    """The edge's first digest sync (the one its first connect starts: a new box), on the cloud's
    own clock, in seconds from its digest's creation: the diff's answer begun (its first state
    written), the answer written (its final end), the final end delivered."""
    with cloud.db.read() as conn:
        rows = conn.execute(
            sa.select(EdgeEvent.action, EdgeEvent.body, EdgeEvent.created_time, EdgeEvent.delivered_time)
            .where(EdgeEvent.edge_id == edge_id, EdgeEvent.type.in_(("_sync", "device")))
            .order_by(EdgeEvent.seq)
        ).all()
    start = next(r.created_time for r in rows if r.action == "DIGEST")
    begun = next(r.created_time for r in rows if r.action in ("ADDED", "UPDATED"))
    end = next(r for r in rows if r.action == "SYNC" and pb.SyncEnd.FromString(r.body).final)
    return (begun - start) / 1000, (end.created_time - start) / 1000, (end.delivered_time - start) / 1000


def run(args: argparse.Namespace, cloud_url: str, tmp: Path) -> dict[str, Any]:
    raw = raw_insert_rate(cloud_url, args.entities)
    platform = make_plugin_manager()
    cloud = Node(cloud_url, platform=platform)
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        tenant = c.create_tenant("Acme")
        c.create_user("admin@acme.io", tenant, "TENANT_ADMIN")
        edge, secret = c.create_edge("edge", tenant)
    import_assigned(cloud, "device", "device", args.entities, "edge")
    with cloud.db.begin() as s:  # the first sync alone brings the edge its state
        s.execute(sa.delete(EdgeEvent).where(EdgeEvent.edge_id == edge.id))
    edge_node = Node(f"sqlite:///{tmp / 'edge.db'}", platform=platform)
    link: InProcess | Processes = (Processes if args.processes else InProcess)(cloud, edge_node, tmp)
    edge_node.init_edge(link.cloud_addr, edge.routing_key, secret)
    link.start_edge()
    try:
        if isinstance(link, InProcess):
            link.runner.wait_connected(link.handle)
        else:
            wait_for(lambda: configured(edge_node), timeout=120, interval=0.02, what="the edge's connect")
        progress("first sync")
        first_s, first = timed_sync(cloud, full=False)
        with edge_node.db.read() as conn:
            held = int(conn.scalar(sa.select(sa.func.count()).select_from(Entity)) or 0)
        assert held == args.entities, held
        begun_s, written_s, own_s = first_digest_sync_s(cloud, edge.id)
        progress("Sync Edge of the in-sync edge")
        again_s, again = timed_sync(cloud, full=args.full)
    finally:
        link.stop_edge()
        link.close()
        edge_node.close()
        cloud.close()
    return {
        "entities": args.entities,
        "database": sa.engine.make_url(cloud_url).get_backend_name(),
        "second_sync": "full" if args.full else "digest",
        "processes": bool(args.processes),
        "first_sync_s": round(first_s, 3),
        "first_sync_entities_per_s": round(args.entities / first_s),
        "first_digest_sync_s": round(own_s, 3),
        "first_digest_sync_entities_per_s": round(args.entities / own_s),
        "first_answer_begun_s": round(begun_s, 3),
        "first_answer_written_s": round(written_s, 3),
        "first_sync_bytes": first["bytes"],
        "first_sync_state": first["state"],
        "in_sync_s": round(again_s, 3),
        "in_sync_bytes": again["bytes"],
        "in_sync_state": again["state"],
        "in_sync_counts": {k: again[k] for k in ("added", "updated", "removed", "unchanged", "failed")},
        "bytes_ratio": round(again["bytes"] / first["bytes"], 5),
        "raw_insert_rows_per_s": round(raw),
        "ratio_first_sync_to_raw": round(args.entities / first_s / raw, 3),
        "load": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench resync")
    ap.add_argument("--entities", type=int, default=20_000, help="devices assigned to the edge")
    ap.add_argument("--full", action="store_true", help="the second sync is a full one (bench full-sync)")
    ap.add_argument(
        "--cloud-db", default=None, help="cloud database URL (default: a new PostgreSQL database)"
    )
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument(
        "--processes", action="store_true", help="cloud and edge as two `winstar run` processes, as deployed"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_on_a_new_database(args, "resync", run, sqlite_fallback=True)
    if args.json:
        print(json.dumps(result))
        return
    r = result
    print(
        f"Sync Edge of one edge holding {r['entities']:,} devices, cloud on {r['database']}, real gRPC,"
        f" {'two processes' if r['processes'] else 'one process'}"
        f" (load average {r['load']:.2f}, {os.cpu_count()} cores)"
    )
    print(
        f"  first sync (everything): {r['first_sync_s']} s, {r['first_sync_entities_per_s']:,} entities/s,"
        f" {r['first_sync_bytes']:,} bytes ({r['first_sync_state']})"
    )
    print(
        f"    (its digest sync alone, digest queued to last end delivered: {r['first_digest_sync_s']} s,"
        f" {r['first_digest_sync_entities_per_s']:,} entities/s; its answer begun after"
        f" {r['first_answer_begun_s']} s, written after {r['first_answer_written_s']} s)"
    )
    print(
        f"  {r['second_sync']} sync of the in-sync edge: {r['in_sync_s']} s, {r['in_sync_bytes']:,} bytes"
        f" = {100 * r['bytes_ratio']:.3f} % of the first ({r['in_sync_state']}; {r['in_sync_counts']})"
    )
    print(
        f"  raw insert rate of the same database: {r['raw_insert_rows_per_s']:,} rows/s;"
        f" first-sync entities/s ÷ raw rows/s = {r['ratio_first_sync_to_raw']}"
    )
