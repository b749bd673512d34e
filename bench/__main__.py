"""Winstar benchmarks: drain and latency, cloud on PostgreSQL, edge on SQLite, real gRPC on loopback.

    python -m bench [--events N] [--devices N] [--updates N] [--cloud-db URL] [--in-process]
    python -m bench fanout [--edges N] ...      (bench/fanout.py: 1,000 edges on two nodes)
    python -m bench failover [--edges N] ...    (bench/failover.py: a node killed during a drain)
    python -m bench uplink-apply ...            (bench/uplink_apply.py: the cloud's apply alone)
    python -m bench console ...                 (bench/console.py: the console's REST API)

The cloud and the edge run as two `winstar run` processes, as they are deployed (``--in-process``:
both on one event loop inside the benchmark's process, sharing its interpreter lock). The
benchmark writes through the services and reads the databases to see what arrived.

Drain rates are timed on the sender's own clock: from the first to the last acknowledgement of the
backlog (``delivered_time`` of its outbox rows), so the start-up of a process is not counted; the
wall time from the start of the edge is printed beside them.

Prints each figure next to the raw limits measured in the same run (how fast the same machine
inserts rows into each database without Winstar), so the numbers can be read against the box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.store.db import make_engine
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity
from winstar_core.transport.inprocess import LinkRunner, wait_for

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"


def progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"  .. {msg}", file=sys.stderr, flush=True)


def create_pg_database(server_url: str) -> tuple[str, str] | None:
    name = f"winstar_bench_{os.getpid()}"
    try:
        admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); the cloud runs on SQLite", file=sys.stderr)
        return None
    url = sa.engine.make_url(make_engine(server_url).url).set(database=name)
    return url.render_as_string(hide_password=False), name


def drop_pg_database(server_url: str, name: str) -> None:
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run_on_a_new_database(
    args: argparse.Namespace,
    name: str,
    run: Callable[[argparse.Namespace, str, Path], dict[str, Any]],
    *,
    sqlite_fallback: bool = False,
) -> dict[str, Any]:
    """``run(args, cloud_url, tmp)`` on ``args.cloud_db`` when the scenario takes one, else on a
    new PostgreSQL database of ``args.pg_server`` (dropped after; without a server: a SQLite file
    when ``sqlite_fallback``, else the scenario stops with a line saying it needs one), in a new
    temporary folder (removed after)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"winstar-{name}-"))
    made = None
    url = getattr(args, "cloud_db", None)
    try:
        if url is None:
            made = create_pg_database(args.pg_server)
            if made is None and not sqlite_fallback:
                raise SystemExit(f"bench {name} needs PostgreSQL (--pg-server)")
            url = made[0] if made else f"sqlite:///{tmp / 'cloud.db'}"
        return run(args, url, tmp)
    finally:
        if made:
            drop_pg_database(args.pg_server, made[1])
        shutil.rmtree(tmp, ignore_errors=True)


def raw_insert_rate(url: str, rows: int) -> float:
    """Rows/s the database takes in one transaction through SQLAlchemy, without Winstar."""
    engine = make_engine(url)
    meta = sa.MetaData()
    table = sa.Table(
        f"bench_raw_{uuid.uuid4().hex[:8]}",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.LargeBinary),
    )
    meta.create_all(engine)
    payload = os.urandom(200)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"id": i, "body": payload} for i in range(rows)])
    rate = rows / (time.perf_counter() - t0)
    meta.drop_all(engine)
    engine.dispose()
    return rate


def count(node: Node, model: type, **where: object) -> int:
    with node.db.read() as conn:
        stmt = sa.select(sa.func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(conn.scalar(stmt) or 0)


class InProcess:
    """Cloud and edge on one background event loop in this process."""

    def __init__(self, cloud: Node, edge: Node, tmp: Path) -> None:
        self.cloud, self.edge = cloud, edge
        self.runner = LinkRunner()
        self.server = self.runner.start_cloud(cloud, 0)
        self.cloud_addr = f"127.0.0.1:{self.server.port}"
        self.handle: Any = None

    def start_edge(self) -> None:
        self.handle = self.runner.start_edge(self.edge)

    def stop_edge(self) -> None:
        self.runner.stop_edge(self.handle)

    def close(self) -> None:
        self.runner.stop_cloud(self.server, 0.2)
        self.runner.close()


class Processes:
    """Cloud and edge as two `winstar run` processes, as deployed."""

    def __init__(self, cloud: Node, edge: Node, tmp: Path) -> None:
        self.edge, self.tmp = edge, tmp
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.cloud_addr = f"127.0.0.1:{port}"
        self.cloud = self._spawn(cloud, "cloud", "--listen", self.cloud_addr)
        self.edge_proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, node: Node, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it
        return subprocess.Popen(
            [sys.executable, "-m", "winstar_core", "--db", node.url, "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_edge(self) -> None:
        self.edge_proc = self._spawn(self.edge, "edge")

    def stop_edge(self) -> None:
        assert self.edge_proc is not None
        self.edge_proc.send_signal(signal.SIGTERM)
        self.edge_proc.wait(30)

    def close(self) -> None:
        self.cloud.send_signal(signal.SIGTERM)
        self.cloud.wait(30)


def drain(link: InProcess | Processes, sender: Node, model: Any, type_name: str) -> tuple[int, float, float]:
    """Start the edge and wait until ``sender``'s outbox has nothing PENDING. Returns the events of
    ``type_name`` acknowledged, the seconds from their first to their last acknowledgement, and
    the seconds from the edge's start."""
    t0 = time.perf_counter()
    link.start_edge()
    wait_for(lambda: count(sender, model, status="PENDING") == 0, timeout=900, interval=0.02)
    wall_s = time.perf_counter() - t0
    with sender.db.read() as conn:
        n, first, last = conn.execute(
            sa.select(
                sa.func.count(), sa.func.min(model.delivered_time), sa.func.max(model.delivered_time)
            ).where(model.status == "DELIVERED", model.type == type_name)
        ).one()
    return int(n), max((last or 0) - (first or 0), 1) / 1000, wall_s


def _drain_figures(
    what: str, n: int, seconds: float, wall_s: float, ratio: str, raw: float
) -> dict[str, Any]:
    """A drain's figures for ``--json``: ``n`` of ``what`` in ``seconds``, and ``ratio`` to ``raw``."""
    return {
        what: n,
        "seconds": round(seconds, 3),
        "per_s": round(n / seconds),
        ratio: round(n / seconds / raw, 3),
        "wall_s": round(wall_s, 3),
    }


def main() -> None:
    if sys.argv[1:2] in (
        ["fanout"],
        ["failover"],
        ["import"],
        ["resync"],
        ["full-sync"],
        ["growth"],
        ["memory"],
        ["compaction"],
        ["uplink-apply"],
        ["console"],
    ):
        from importlib import import_module

        module = {"import": "importing", "full-sync": "resync", "uplink-apply": "uplink_apply"}.get(
            sys.argv[1], sys.argv[1]
        )
        extra = ["--full"] if sys.argv[1] == "full-sync" else []
        import_module("bench." + module).main(extra + sys.argv[2:])
        return
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--events", type=int, default=20_000, help="cloud -> edge events to drain")
    ap.add_argument("--devices", type=int, default=10_000, help="edge -> cloud devices to drain")
    ap.add_argument("--updates", type=int, default=300, help="single updates timed for latency")
    ap.add_argument(
        "--cloud-db", default=None, help="cloud database URL (default: a new PostgreSQL database)"
    )
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument(
        "--in-process", action="store_true", help="run cloud and edge inside this process (one GIL)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object (the lines go to stderr)")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout
    result: dict[str, Any] = {"scenario": "drain and latency", "cores": os.cpu_count()}

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="winstar-bench-"))
    made_pg = None
    cloud_url = args.cloud_db
    if cloud_url is None:
        made_pg = create_pg_database(args.pg_server)
        cloud_url = made_pg[0] if made_pg else f"sqlite:///{tmp / 'cloud.db'}"
    edge_url = f"sqlite:///{tmp / 'edge.db'}"
    mode = "one process (--in-process)" if args.in_process else "two `winstar run` processes"
    say(f"machine: {os.cpu_count()} cores, Python {pyplatform.python_version()}, {pyplatform.machine()}")
    say(f"cloud: {sa.engine.make_url(cloud_url).get_backend_name()}   edge: sqlite   link: {mode}")

    # raw limits, same run
    raw_cloud = raw_insert_rate(cloud_url, 20_000)
    raw_edge = raw_insert_rate(f"sqlite:///{tmp / 'raw.db'}", 20_000)
    say(
        f"raw limit: cloud database inserts {raw_cloud:,.0f} rows/s; edge SQLite inserts {raw_edge:,.0f} rows/s"
    )
    floor = min(raw_cloud, raw_edge)  # a drain writes (and marks) on both sides
    result["raw"] = {"cloud_rows_per_s": round(raw_cloud), "edge_rows_per_s": round(raw_edge)}

    platform = make_plugin_manager()
    cloud = Node(cloud_url, platform=platform)
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        t = c.create_tenant("Bench")
        c.create_user("admin@bench.io", t, "TENANT_ADMIN")
        edge_row, secret = c.create_edge("bench-edge", t)
    edge = Node(edge_url, platform=platform)
    link = (InProcess if args.in_process else Processes)(cloud, edge, tmp)
    edge.init_edge(link.cloud_addr, edge_row.routing_key, secret)

    def edge_configured() -> bool:  # the first connect brought the users and the edition
        with edge.edge() as ed:
            return ed.edition is not None

    link.start_edge()
    wait_for(edge_configured, timeout=60, interval=0.05)
    link.stop_edge()  # now offline, to build a backlog

    # 1. cloud -> edge drain of a backlog
    progress(f"writing {args.events} downlink events")
    t0 = time.perf_counter()
    with cloud.cloud() as c:
        tenant, e = c.find_tenant("Bench"), c.find_edge("bench-edge")
        for i in range(args.events):
            c.assign(e, c.create_entity("asset", f"asset-{i:06}", tenant, {"label": "x"}))
    write_s = time.perf_counter() - t0
    progress("draining cloud -> edge")
    n, down_s, wall_s = drain(link, cloud, EdgeEvent, "asset")
    assert n == count(edge, Entity, type="asset") == args.events
    say(
        f"cloud -> edge: {n:,} events drained in {down_s:.2f}s = {n / down_s:,.0f} events/s"
        f"  ({wall_s:.2f}s from the edge's start; writing them with their entities took {write_s:.2f}s)"
        f"; {n / down_s / floor:.2f} of the raw floor (target >= 0.5)"
    )
    result["downlink"] = _drain_figures("events", n, down_s, wall_s, "ratio_to_raw_floor", floor)

    # 2. edge -> cloud drain of devices created offline
    link.stop_edge()
    progress(f"creating {args.devices} devices on the edge, offline")
    with edge.edge() as ed:
        for i in range(args.devices):
            ed.create_entity("device", f"dev-{i:06}", None, user_email="admin@bench.io")
    progress("draining edge -> cloud")
    n, up_s, wall_s = drain(link, edge, CloudEvent, "device")
    assert n == count(cloud, Entity, type="device") == args.devices
    say(
        f"edge -> cloud: {n:,} devices drained in {up_s:.2f}s = {n / up_s:,.0f} devices/s"
        f"  ({wall_s:.2f}s from the edge's start; target >= 8,000)"
    )
    result["uplink"] = _drain_figures("devices", n, up_s, wall_s, "ratio_to_raw_cloud", raw_cloud)

    # 3. latency: one committed change at a time, cloud commit -> edge commit
    wait_for(lambda: count(cloud, EdgeEvent, status="PENDING") == 0, timeout=300)
    progress(f"timing {args.updates} single updates")
    with cloud.cloud() as c:
        target = c.create_entity("asset", "latency-probe", c.find_tenant("Bench"))
        c.assign(c.find_edge("bench-edge"), target)
    wait_for(lambda: count(edge, Entity, id=target.id) == 1)
    with cloud.cloud() as c:
        edge_id = c.find_edge("bench-edge").id

    def update(i: int) -> float:
        with cloud.cloud() as c:
            c.update_entity(c.entities.find_entity("asset", str(target.id)), data={"label": f"v{i}"})
        return time.perf_counter()

    def version_on_edge() -> int | None:
        with edge.db.read() as conn:
            return conn.scalar(sa.select(Entity.version).where(Entity.id == target.id))

    def last_delivered() -> int:  # the node's clock when the edge's last ack came back
        with cloud.db.read() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.max(EdgeEvent.delivered_time)).where(
                        EdgeEvent.edge_id == edge_id, EdgeEvent.status == "DELIVERED"
                    )
                )
                or 0
            )

    samples: list[float] = []
    for i in range(args.updates):
        t_commit = update(i)
        wait_for(lambda v=i + 2: version_on_edge() == v, timeout=30, interval=0.0005)
        samples.append((time.perf_counter() - t_commit) * 1000)
    acked: list[float] = []
    for i in range(args.updates, 2 * args.updates):
        # wait for an ack after the clock read *before* the commit (one read after it could come
        # later than a fast ack, and the wait would never end); time it from the one after
        before = time.time() * 1000
        update(i)
        wall_commit = time.time() * 1000
        wait_for(lambda w=before: last_delivered() >= w - 1, timeout=30, interval=0.01)
        acked.append(max(last_delivered() - wall_commit, 0.0))
    for key, what, values in (
        (
            "edge_commit",
            "cloud commit -> edge commit, seen by polling the edge database every 0.5 ms",
            samples,
        ),
        ("ack", "cloud commit -> the edge's ack recorded by the node, polled every 10 ms", acked),
    ):
        values.sort()
        p50 = statistics.median(values)
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        say(
            f"latency {what} ({args.updates} updates): p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
            f" max {values[-1]:.1f} ms (target p50 <= 5, p99 <= 20)"
        )
        result.setdefault("latency_ms", {})[key] = {
            "p50": round(p50, 2),
            "p99": round(p99, 2),
            "max": round(values[-1], 2),
        }

    link.stop_edge()
    link.close()
    cloud.close()
    edge.close()
    if made_pg:
        drop_pg_database(args.pg_server, made_pg[1])
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
