"""Compaction of an offline edge's backlog: `python -m bench compaction`.

    python -m bench compaction [--entities 50] [--updates 100] [--pg-server URL] [--json]

A cloud node (`winstar run --listen`, a process, on a fresh PostgreSQL database) and an edge
(`winstar run`, a process, on SQLite), over real gRPC on loopback. ``--entities`` assets are
created, assigned to the edge and delivered; the edge goes offline; each asset is then updated
``--updates`` times, each update its own transaction through the cloud service (as `winstar
entity update` does), round-robin over the assets; the edge reconnects and drains. Printed: the
events written while it was offline, those compaction superseded (replaced by a later event of
the same entity before being sent), those actually sent, the drain's time (sender's clock, first
to last acknowledgement, and from the edge's start), and every asset's version on the edge.

The comparison without compaction runs the same on a second edge with compaction switched off
in the benchmark's own process (``winstar_core.store.outbox.compact`` replaced by a function that
supersedes nothing, for the writes of that phase only: the writes are made here, the node only
sends them), so every written event is sent. The core is not changed.

Printed beside the raw insert rate of the same database in the same run.
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
from unittest import mock

import sqlalchemy as sa

from bench.__main__ import (
    DEFAULT_PG,
    Processes,
    progress,
    raw_insert_rate,
    run_on_a_new_database,
)
from bench.growth import connect_once, drain_edge, edge_count, import_assigned, new_cloud
from winstar_core.node import Node
from winstar_core.store import outbox
from winstar_core.store.models import DELIVERED, PENDING, SUPERSEDED, EdgeEvent, Entity, StreamCounter, now_ms
from winstar_core.store.outbox import downlink_stream


def add_edge(cloud: Node, name: str, tmp: Path, link: Processes | None) -> tuple[uuid.UUID, Node, Processes]:
    """A real edge ``name``, its SQLite database, and the link (a new cloud process if None)."""
    with cloud.cloud() as c:
        row, secret = c.create_edge(name, c.find_tenant("Bench"))
        edge_id, key = row.id, row.routing_key
    folder = tmp / name
    folder.mkdir()
    edge = Node(f"sqlite:///{folder / 'edge.db'}", platform=cloud.platform)
    if link is None:
        link = Processes(cloud, edge, folder)
    link.edge = edge
    edge.init_edge(link.cloud_addr, key, secret)
    return edge_id, edge, link


def last_seq(cloud: Node, edge_id: uuid.UUID) -> int:
    with cloud.db.read() as conn:
        stmt = sa.select(StreamCounter.last_seq).where(StreamCounter.stream == downlink_stream(edge_id))
        return int(conn.scalar(stmt) or 0)


def phase(
    args: argparse.Namespace, cloud: Node, tmp: Path, link: Processes | None, name: str, compacting: bool
) -> tuple[dict[str, Any], Processes, Node]:
    edge_id, edge, link = add_edge(cloud, name, tmp, link)
    connect_once(link, edge)
    import_assigned(cloud, "asset", name, args.entities, name)
    drain_edge(link, cloud, edge_id, "asset")  # the assets on the edge
    link.stop_edge()  # offline
    with cloud.cloud() as c:
        ids = [
            e.id
            for e in c.session.scalars(
                sa.select(Entity).where(Entity.name.like(f"{name}-%")).order_by(Entity.name)
            )
        ]
    assert len(ids) == args.entities
    before = last_seq(cloud, edge_id)
    progress(f"{name}: {args.entities * args.updates:,} updates while offline")
    off = mock.patch.object(outbox, "compact", lambda *a, **k: 0) if not compacting else None
    t0 = time.perf_counter()
    if off:
        off.start()
    try:
        for r in range(args.updates):
            for entity_id in ids:
                with cloud.cloud() as c:
                    c.update_entity(
                        c.entities.find_entity("asset", str(entity_id)), data={"label": f"v{r + 1}"}
                    )
    finally:
        if off:
            off.stop()
    write_s = time.perf_counter() - t0
    offline = sa.and_(EdgeEvent.seq > before, EdgeEvent.type == "asset")  # the updates' events
    written = edge_count(cloud, edge_id, offline)
    superseded = edge_count(cloud, edge_id, offline, EdgeEvent.status == SUPERSEDED)
    pending = edge_count(cloud, edge_id, offline, EdgeEvent.status == PENDING)
    progress(f"{name}: reconnecting")
    since = now_ms()
    n, drain_s, wall_s = drain_edge(link, cloud, edge_id, "asset", since)
    link.stop_edge()
    sent = edge_count(cloud, edge_id, offline, EdgeEvent.status == DELIVERED)
    with edge.db.read() as conn:
        versions = sorted({int(v) for v in conn.scalars(sa.select(Entity.version).where(Entity.id.in_(ids)))})
    return (
        {
            "compaction": compacting,
            "entities": args.entities,
            "updates_each": args.updates,
            "written": written,
            "superseded": superseded,
            "pending_at_reconnect": pending,
            "sent": sent,
            "write_s": round(write_s, 2),
            "updates_per_s": round(args.entities * args.updates / write_s),
            "drain_s": round(drain_s, 3),
            "wall_s": round(wall_s, 2),
            "versions_on_edge": versions,
            "load": round(os.getloadavg()[0], 2),
        },
        link,
        edge,
    )


def run(args: argparse.Namespace, cloud_url: str, tmp: Path) -> dict[str, Any]:
    raw = raw_insert_rate(cloud_url, 20_000)
    cloud = new_cloud(cloud_url)
    result: dict[str, Any] = {"raw_insert_rows_per_s": round(raw)}
    link: Processes | None = None
    edges: list[Node] = []
    try:
        result["with"], link, edge = phase(args, cloud, tmp, None, "edge-compact", True)
        edges.append(edge)
        result["without"], link, edge = phase(args, cloud, tmp, link, "edge-plain", False)
        edges.append(edge)
    finally:
        if link is not None:
            if link.edge_proc is not None and link.edge_proc.poll() is None:
                link.stop_edge()
            if link.cloud.poll() is None:
                link.close()
        for e in edges:
            e.close()
        cloud.close()
    result["load"] = os.getloadavg()[0]
    return result


def report(r: dict[str, Any]) -> None:
    w, wo = r["with"], r["without"]
    print(
        f"Compaction: {w['entities']} assets each updated {w['updates_each']} times while the edge is offline;"
        f" cloud on PostgreSQL, cloud and edge as `winstar run` processes, real gRPC ({os.cpu_count()} cores)"
    )
    print(f"  raw limit: the cloud database inserts {r['raw_insert_rows_per_s']:,} rows/s (one transaction)")
    for label, p in (("with compaction   ", w), ("without compaction", wo)):
        print(
            f"  {label}: {p['written']:,} events written ({p['updates_per_s']:,} updates/s), {p['superseded']:,}"
            f" superseded, {p['sent']:,} sent; drain {p['drain_s']} s ({p['wall_s']} s from the edge's"
            f" start); versions on the edge {p['versions_on_edge']} (load {p['load']})"
        )
    if w["sent"]:
        print(
            f"  compaction sends {wo['sent'] / w['sent']:,.0f}× fewer events; drain (sender's clock, 1 ms"
            f" resolution) {w['drain_s']} s against {wo['drain_s']} s without it, from the edge's start"
            f" {w['wall_s']} s against {wo['wall_s']} s (that includes connecting)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench compaction")
    ap.add_argument("--entities", type=int, default=50, help="assets updated while the edge is offline")
    ap.add_argument("--updates", type=int, default=100, help="updates of each asset")
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_on_a_new_database(args, "compaction", run)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
