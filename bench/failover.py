"""A cloud node killed during a two-way drain: `python -m bench failover`.

    python -m bench failover [--edges 100] [--nodes 2] [--assets 50] [--devices 50]
                             [--kill-at 0.3] [--generators 1] [--cloud-db URL] [--keep]

``--nodes`` `winstar run` cloud nodes on one PostgreSQL database; ``--edges`` SQLite edges, each
knowing every node's address (listed from a different node first, so each node is the first
choice of its share), held by real :class:`EdgeClient`\\ s in load-generator processes (see
:mod:`bench.fanout`). The edges connect once (to learn their users), go offline, and a backlog is
written both ways: ``--assets`` assets created and assigned to each edge in the cloud, and
``--devices`` devices created on each edge. The generators start again; once ``--kill-at`` of
either backlog is acknowledged, the node serving most edges is killed with SIGKILL. Measured:

- the time from the kill until every edge row names a surviving node (polled every 50 ms; the
  killed node's own rows still look alive for up to 15 s, so only the survivors count), per edge
  and for all;
- the time until both drains are over (no PENDING downlink in the cloud, every device in the
  cloud, no PENDING uplink on any edge), and their totals;
- nothing lost and nothing doubled: every edge holds each of its assets once, the cloud holds
  each device once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from bench.__main__ import DEFAULT_PG, progress
from bench.fanout import (
    CloudNodes,
    CpuWindow,
    Generator,
    cloud_database,
    code_line,
    count_where,
    edge_scalar,
    edges_per_node,
    exit_on_sigterm,
    machine_line,
    make_edge_dbs,
    node_ids,
    postgres_pids,
    print_raw_limits,
    rotate,
    split,
    summary_ms,
    wait_connected,
)
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.store.models import Edge, EdgeEvent, Entity
from winstar_core.transport.inprocess import wait_for


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench failover")
    ap.add_argument("--edges", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=2, help="cloud nodes (one of them is killed)")
    ap.add_argument("--assets", type=int, default=50, help="assets assigned to each edge while offline")
    ap.add_argument("--devices", type=int, default=50, help="devices created on each edge while offline")
    ap.add_argument(
        "--kill-at", type=float, default=0.3, help="kill once this share of either backlog is acknowledged"
    )
    ap.add_argument("--generators", type=int, default=1, help="load-generator processes")
    ap.add_argument("--client-poll", type=float, default=2.0, help="the clients' outbox poll (s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this long")
    ap.add_argument("--cloud-db", default=None, help="cloud database URL (default: a new PostgreSQL one)")
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, edge databases)")
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error("--nodes must be at least 2")
    exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="winstar-failover-"))
    try:
        with cloud_database(args, tmp) as cloud_url:
            run_failover(args, cloud_url, tmp)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_failover(args: argparse.Namespace, cloud_url: str, tmp: Path) -> None:
    print(machine_line())
    print(code_line())
    print(
        f"cloud: {args.nodes} `winstar run` nodes on {sa.engine.make_url(cloud_url).get_backend_name()};"
        f" edges: {args.edges:,} SQLite databases knowing every node, held by {args.generators}"
        f" load-generator process(es) of real EdgeClients (outbox poll {args.client_poll:g}s)"
    )
    print_raw_limits(cloud_url, tmp)
    platform = make_plugin_manager()
    cloud = Node(cloud_url, platform=platform)
    cloud.init_cloud("ce")
    nodes = CloudNodes(cloud_url, args.nodes, tmp)
    gens: list[Generator] = []
    try:
        _failover(args, cloud, nodes, gens, tmp)
    finally:
        for g in gens:
            g.stop()
        nodes.stop()
        cloud.close()


def _failover(
    args: argparse.Namespace, cloud: Node, nodes: CloudNodes, gens: list[Generator], tmp: Path
) -> None:
    n_edges, n_assets, n_devices = args.edges, args.assets, args.devices
    platform = cloud.platform
    with cloud.cloud() as c:
        tenant = c.create_tenant("Failover")
        c.create_user("admin@failover.io", tenant, "TENANT_ADMIN")
        creds = []
        for i in range(n_edges):
            row, secret = c.create_edge(f"edge-{i:04}", tenant)
            creds.append((row.name, row.routing_key, secret))
    dbs, _, _ = make_edge_dbs(platform, tmp, creds, lambda i: rotate(nodes.addrs, i))
    nodes.start()
    wait_for(lambda: len(node_ids(cloud)) == args.nodes, timeout=60, interval=0.1, what="nodes registered")

    def start_generators() -> None:
        for i, share in enumerate(split(dbs, args.generators)):
            gens.append(Generator(i, share, tmp, args.client_poll))

    def stop_generators() -> Counter[str]:
        downs: Counter[str] = Counter()
        for g in gens:
            downs.update(g.stop().get("link_down", {}))
        gens.clear()
        return downs

    # 1. a first connect: the edges learn their users and edition
    progress("first connect")
    start_generators()
    rows_s, clients_s = wait_connected(cloud, n_edges, gens, args.timeout, "first connect")
    print(
        f"first connect: every edge served after {rows_s:.1f}s, every client connected after {clients_s:.1f}s"
    )
    stop_generators()
    wait_for(
        lambda: edges_per_node(cloud).get(None, 0) == n_edges, timeout=60, interval=0.1, what="edges released"
    )

    # 2. the backlog, offline: assets assigned in the cloud, devices created on the edges
    progress("writing the backlog")
    t0 = time.perf_counter()
    with cloud.cloud() as c:
        tenant = c.find_tenant("Failover")
        for edge in sorted(c.list_edges(), key=lambda e: e.name):
            for j in range(n_assets):
                c.assign(edge, c.create_entity("asset", f"{edge.name}-asset-{j:03}", tenant, {"label": "x"}))
    cloud_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for db in dbs:
        node = Node(db.url, platform=platform)
        with node.edge() as ed:
            for j in range(n_devices):
                ed.create_entity("device", f"{db.name}-dev-{j:03}", None, user_email="admin@failover.io")
        node.close()
    edge_s = time.perf_counter() - t0
    down_total = count_where(cloud, EdgeEvent, EdgeEvent.status == "PENDING")
    up_total = n_edges * n_devices
    print(
        f"backlog: {n_edges * n_assets:,} assets assigned in the cloud in {cloud_s:.1f}s ({down_total:,} downlinks"
        f" pending); {up_total:,} devices created on the edges in {edge_s:.1f}s"
    )

    # 3. the drain, and a node killed during it
    progress("draining; waiting for the moment to kill")
    node_pids = {n: [nodes.pid(n)] for n in nodes.names}
    t_start = time.perf_counter()
    start_generators()
    window = CpuWindow({**node_pids, "generators": [g.pid for g in gens], "postgres": postgres_pids}).start()

    def delivered_down() -> int:
        return count_where(cloud, EdgeEvent, EdgeEvent.status == "DELIVERED", EdgeEvent.type == "asset")

    def devices_up() -> int:
        return count_where(cloud, Entity, Entity.type == "device")

    while True:
        down, up = delivered_down(), devices_up()
        if down >= args.kill_at * n_edges * n_assets or up >= args.kill_at * up_total:
            break
        if time.perf_counter() - t_start > args.timeout:
            raise TimeoutError("the drain did not start")
        time.sleep(0.02)
    ids = node_ids(cloud)
    per_node = edges_per_node(cloud)
    victim = max(nodes.names, key=lambda n: per_node.get(ids[n], 0))
    before_kill = {n: per_node.get(ids[n], 0) for n in nodes.names}
    with cloud.db.read() as conn:
        on_victim = set(conn.scalars(sa.select(Edge.name).where(Edge.node_id == ids[victim])))
    window.sample()
    t_kill = time.perf_counter()
    nodes.kill(victim)
    killed_at = time.perf_counter() - t_start
    survivors = {ids[n] for n in nodes.names if n != victim}
    print(
        f"kill -9 {victim} {killed_at:.1f}s after the generators started, serving {before_kill[victim]} edges"
        f" ({', '.join(f'{n} {before_kill[n]}' for n in nodes.names)}; {per_node.get(None, 0)} not connected"
        f" yet); acknowledged so far: {down:,} of {n_edges * n_assets:,} assets down, {up:,} of {up_total:,}"
        f" devices up"
    )

    # 4. every edge served by a survivor; both drains over
    def edges_pending() -> int:
        return sum(edge_scalar(d, "SELECT count(*) FROM cloud_event WHERE status = 'PENDING'") for d in dbs)

    moved: dict[str, float] = {}
    served_s = drained_s = 0.0
    last = last_edges = 0.0
    while not (served_s and drained_s):
        now = time.perf_counter() - t_kill
        with cloud.db.read() as conn:
            for name, nid in conn.execute(sa.select(Edge.name, Edge.node_id)):
                if nid in survivors and name not in moved:
                    moved[name] = now
        if len(moved) == n_edges and not served_s:
            served_s = now
        if not drained_s:
            pending = count_where(cloud, EdgeEvent, EdgeEvent.status == "PENDING")
            # the edges' outboxes last, and at most every 0.5 s (a file each)
            if pending == 0 and devices_up() >= up_total and now - last_edges >= 0.5:
                last_edges = now
                if edges_pending() == 0:
                    drained_s = now
        if now - last > 5:
            progress(f"{len(moved)} edges on survivors after {now:.0f}s")
            last = now
        if now > args.timeout:
            raise TimeoutError(f"after {now:.0f}s: {len(moved)} of {n_edges} edges on a survivor")
        time.sleep(0.05)
    window.stop()
    victims_edges = [t for name, t in moved.items() if name in on_victim]
    per_node = edges_per_node(cloud)
    print(
        f"failover: every edge served by a survivor {served_s:.2f}s after the kill"
        f" (per edge of {victim}'s {len(victims_edges)}: {summary_ms([1000 * t for t in victims_edges] or [0])},"
        " polled every 50 ms);"
        f" both drains over (no PENDING downlink, every device in the cloud, no PENDING uplink on any edge)"
        f" {drained_s:.2f}s after the kill, {killed_at + drained_s:.1f}s after the start;"
        f" now {', '.join(f'{n} {per_node.get(ids[n], 0)}' for n in nodes.names if n != victim)}"
    )
    print(
        "CPU from the start to the end of the drains: "
        + ", ".join(f"{n} {window.used[n]:.1f}s" for n in nodes.names)
        + f", generators {window.used['generators']:.1f}s, PostgreSQL {window.used['postgres']:.1f}s"
        f" over {window.seconds:.1f}s"
    )

    # 5. totals, and nothing lost or doubled
    with cloud.db.read() as conn:
        down_status = dict(
            conn.execute(sa.select(EdgeEvent.status, sa.func.count()).group_by(EdgeEvent.status)).all()
        )
        dup_devices = conn.scalar(
            sa.select(sa.func.count()).select_from(
                sa.select(Entity.name)
                .where(Entity.type == "device")
                .group_by(Entity.name)
                .having(sa.func.count() > 1)
                .subquery()
            )
        )
        devices = devices_up()
    up_status: Counter[str] = Counter()
    short: list[str] = []
    for d in dbs:
        with contextlib.closing(sqlite3.connect(d.path)) as lite:
            up_status.update(dict(lite.execute("SELECT status, count(*) FROM cloud_event GROUP BY status")))
            assets, names = lite.execute(
                "SELECT count(*), count(DISTINCT name) FROM entity WHERE type = 'asset'"
            ).fetchone()
        if assets != n_assets or names != n_assets:
            short.append(f"{d.name}: {assets} assets ({names} names)")
    print(
        f"totals: downlinks {dict(down_status)}; uplinks {dict(up_status)};"
        f" cloud holds {devices:,} devices ({dup_devices} names twice) of {up_total:,};"
        f" {n_edges - len(short)} of {n_edges} edges hold their {n_assets} assets exactly once"
        + (f"; short: {'; '.join(short[:5])}" if short else "")
    )
    lost = (
        devices != up_total or dup_devices or short or down_status.get("PENDING") or up_status.get("PENDING")
    )
    print("nothing lost, nothing doubled" if not lost else "LOST OR DOUBLED: see above")
    downs = stop_generators()
    print(f"links that went down (client log, by reason): {dict(downs)}")
    for n in nodes.names:
        if n == victim:
            continue
        warns = [ln for ln in nodes.log_tail(n) if " WARNING " in ln or " ERROR " in ln]
        if warns:
            print(f"{n} log: {len(warns)} warning/error line(s), first: {warns[0][:300]}")


if __name__ == "__main__":
    main()
