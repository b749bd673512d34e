"""The console's REST API on a large cloud: ``python -m bench console``.

    python -m bench console [--edges 1000] [--events 100000] [--big 20000] [--requests 200]
                            [--cloud-db URL] [--pg-server URL] [--json]

On a new PostgreSQL database (``--cloud-db``: another database, e.g. a new SQLite file), one
tenant with a tenant administrator and ``--edges`` edges (through the cloud service; the edges'
secrets are hashed with SHA-256 instead of scrypt while seeding, 50 ms each, as no edge connects
here), then ``--events`` downlinks written straight into ``edge_event`` (COPY on PostgreSQL) with
each edge's stream counter: one "big" edge holds ``--big`` of them, the others share the rest
evenly. Every edge's newest 5 % are PENDING, 0.5 % of the others FAILED (with an error), the
rest DELIVERED; ten edges are connected (a ``cloud_node`` whose heartbeat this process keeps
fresh). ``ANALYZE`` after.

The console runs as its own process (`winstar console`; where the command is missing, uvicorn
started on ``make_app`` in a child process), so the client's timing shares no interpreter lock
with the server. One ``httpx.Client`` (keep-alive) with an API token sends, after a warm-up,
``--requests`` requests one after the other to each endpoint: the edges list, the big edge's
show, its first page of downlinks (50, newest first), its ``status=failed`` page, a deep page
(``before`` near the start of its stream), and a small edge's page. p50/p95/p99/max in ms, each
p50 and p95 against the 50 ms of the issue.

Printed beside the raw limits measured in the same run: the statements each endpoint needs, run
through SQLAlchemy Core on one connection of this process (no ORM objects, no JSON, no HTTP);
a 404 of the same server (HTTP and routing, no database); ``GET /api/v1/me`` (the token checked
and the user read: what every API request pays before its own work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform as pyplatform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import sqlalchemy as sa

from bench.__main__ import DEFAULT_PG, progress, run_on_a_new_database
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.services import auth, cloud_edges
from winstar_core.store.models import CloudNode, Edge, EdgeEvent, StreamCounter, User, now_ms

LIMIT_MS = 50.0
PAGE = 50
CONNECTED = 10
EDGE_EVENT = cast(sa.Table, EdgeEvent.__table__)


# -- seeding ---------------------------------------------------------------------------------------
def seed(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    """The tenant, its administrator's token, the edges and their downlinks; returns the ids."""
    real_hash = cloud_edges.hash_secret
    cloud_edges.hash_secret = lambda secret, salt: hashlib.sha256(salt + secret.encode()).digest() * 2
    try:
        with node.cloud() as c:
            tenant = c.create_tenant("Bench")
            user = c.create_user("admin@bench.io", tenant, "TENANT_ADMIN")  # before the edges
            edges = [c.create_edge(f"edge-{i:05}", tenant)[0] for i in range(args.edges)]
            tenant_id, user_id = tenant.id, user.id
            edge_ids = [e.id for e in edges]
    finally:
        cloud_edges.hash_secret = real_hash
    with node.db.begin() as session:
        admin = session.get(User, user_id)
        assert admin is not None
        token = auth.create_token(session, admin, "bench").token
    big, small = edge_ids[len(edge_ids) // 2], edge_ids[len(edge_ids) // 3]
    rest = args.events - args.big
    others = [e for e in edge_ids if e != big]
    sizes = {e: rest // len(others) + (1 if i < rest % len(others) else 0) for i, e in enumerate(others)}
    sizes[big] = args.big
    with node.db.read() as conn:  # what creating the edges queued already (none today)
        stmt = sa.select(EdgeEvent.edge_id, sa.func.max(EdgeEvent.seq)).group_by(EdgeEvent.edge_id)
        first = dict(conn.execute(stmt).tuples().all())
    connected = set(edge_ids[:CONNECTED])
    rng = random.Random(10)
    body = bytes(rng.randrange(256) for _ in range(200))
    base = now_ms() - 30 * 86_400_000
    failed: dict[uuid.UUID, int] = {}

    def rows() -> Any:
        for edge_id in edge_ids:
            n, start = sizes[edge_id], first.get(edge_id) or 0
            pending_from = n - max(1, n // 20)
            for i in range(n):
                created = base + i * 1000
                if i >= pending_from and edge_id not in connected:
                    status, delivered, error = "PENDING", None, None
                elif rng.random() < 0.005:
                    status, delivered, error = "FAILED", created + 40, "device refused by the edge: bench"
                    failed[edge_id] = failed.get(edge_id, 0) + 1
                else:
                    status, delivered, error = "DELIVERED", created + 25, None
                yield {
                    "id": uuid.uuid4(),
                    "edge_id": edge_id,
                    "seq": start + i + 1,
                    "created_time": created,
                    "tenant_id": tenant_id,
                    "type": "device",
                    "action": "ADDED" if i % 3 == 0 else "UPDATED",
                    "entity_id": uuid.UUID(int=(edge_id.int ^ (i % 97))),
                    "body": body,
                    "status": status,
                    "delivered_time": delivered,
                    "error": error,
                    "retried_as": None,
                }

    progress(f"writing {args.events:,} downlinks")
    t0 = time.perf_counter()
    engine = node.db.engine
    if engine.dialect.name == "postgresql":
        columns = [c.name for c in EDGE_EVENT.columns]
        raw = engine.raw_connection()
        try:
            pg: Any = raw.driver_connection  # psycopg's connection: COPY
            with pg.cursor() as cur, cur.copy(f"COPY edge_event ({', '.join(columns)}) FROM STDIN") as cp:
                for row in rows():
                    cp.write_row([row[c] for c in columns])
            raw.commit()
        finally:
            raw.close()
    else:
        with engine.begin() as conn:
            batch: list[dict[str, Any]] = []
            for row in rows():
                batch.append(row)
                if len(batch) == 10_000:
                    conn.execute(sa.insert(EDGE_EVENT), batch)
                    batch = []
            if batch:
                conn.execute(sa.insert(EDGE_EVENT), batch)
    write_s = time.perf_counter() - t0
    node_id = uuid.uuid4()
    with engine.begin() as conn:
        counter = sa.update(StreamCounter).where(StreamCounter.stream == sa.bindparam("s"))
        conn.execute(
            counter.values(last_seq=sa.bindparam("n")),
            [{"s": f"downlink:{e}", "n": (first.get(e) or 0) + sizes[e]} for e in edge_ids],
        )
        conn.execute(
            sa.insert(CloudNode).values(
                id=node_id, name="bench-node", address="127.0.0.1:1", started=now_ms(), last_seen=now_ms()
            )
        )
        conn.execute(sa.update(Edge).where(Edge.id.in_(connected)).values(node_id=node_id))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    return {
        "token": token,
        "tenant_id": tenant_id,
        "edge_ids": edge_ids,
        "big": big,
        "small": small,
        "small_events": sizes[small],
        "big_failed": failed.get(big, 0),
        "node_id": node_id,
        "write_s": write_s,
    }


class Heartbeat:
    """Keeps the bench node's ``last_seen`` fresh (as a live node does), so the connected edges
    stay connected during the run."""

    def __init__(self, node: Node, node_id: uuid.UUID) -> None:
        self.node, self.node_id = node, node_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(2.0):
            with self.node.db.engine.begin() as conn:
                conn.execute(
                    sa.update(CloudNode).where(CloudNode.id == self.node_id).values(last_seen=now_ms())
                )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


# -- the console process ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: the console's application served by uvicorn (argv: URL, port, "app" or "api": the API's routes
#: alone, when the web pages cannot be built)
SERVE = """
import sys, uvicorn
from starlette.applications import Starlette
from winstar_core.console import api
from winstar_core.console.app import Console, make_app
from winstar_core.node import Node
node = Node(sys.argv[1])
app = make_app(node) if sys.argv[3] == "app" else Starlette(routes=api.routes(Console(node)))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False, lifespan="off")
"""


def start_console(url: str, tmp: Path, server: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """The console in a child process: `winstar console` (``server`` "console"), else (or with
    "uvicorn") uvicorn.run on ``make_app``, else on the API's routes alone. Returns the process,
    its base URL and how it was started."""
    hows = ["uvicorn.run on make_app", "uvicorn.run on the API's routes alone"]
    for how in (["winstar console"] if server == "console" else []) + hows:
        port = free_port()
        if how == "winstar console":
            cmd = [
                sys.executable,
                "-m",
                "winstar_core",
                "--db",
                url,
                "console",
                "--listen",
                f"127.0.0.1:{port}",
            ]
        else:
            cmd = [sys.executable, "-c", SERVE, url, str(port), "api" if "API" in how else "app"]
        log = open(tmp / "console.log", "ab")  # noqa: SIM115 - the child writes it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(base + "/api/v1/bench-nothing", timeout=1).status_code == 404:
                    return proc, base, how
            except httpx.TransportError:
                time.sleep(0.1)
        stop(proc)
    tail = (tmp / "console.log").read_text(errors="replace")[-2000:]
    raise SystemExit(f"the console did not start:\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measuring --------------------------------------------------------------------------------------
def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(len(s) * q))]

    return {
        "p50": round(statistics.median(s), 2),
        "p95": round(at(0.95), 2),
        "p99": round(at(0.99), 2),
        "max": round(s[-1], 2),
    }


def timed(call: Callable[[], Any], n: int, budget_s: float) -> list[float]:
    """``n`` calls of ``call`` (fewer when they take more than ``budget_s`` in all, at least 20)
    after ``n // 10`` (at least 5) not counted; their ms."""
    for _ in range(max(5, n // 10)):
        call()
    out: list[float] = []
    end = time.perf_counter() + budget_s
    while len(out) < n and (len(out) < 20 or time.perf_counter() < end):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def http_series(
    client: httpx.Client, path: str, n: int, budget_s: float, expect: int = 200
) -> tuple[list[float], int]:
    """The ms of ``n`` GETs of ``path`` (fewer past ``budget_s``) and the size of an answer."""
    size = [0]

    def call() -> None:
        r = client.get(path)
        if r.status_code != expect:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:200]}")
        size[0] = len(r.content)

    return timed(call, n, budget_s), size[0]


def sql_statements(ids: dict[str, Any]) -> dict[str, list[Any]]:
    """The statements each endpoint needs for its own data (after the caller is known), in
    SQLAlchemy Core: no ORM objects. The edges list's counts name the tenant's edges by a
    subquery (one statement each, whatever the number of edges), the live nodes in one."""
    e, big, small = EDGE_EVENT.c, ids["big"], ids["small"]
    edge_cols = sa.select(*Edge.__table__.c)
    tenant_edges = sa.select(Edge.id).where(Edge.tenant_id == ids["tenant_id"])
    page = sa.select(*EDGE_EVENT.c).order_by(e.seq.desc()).limit(PAGE)

    def counts(status: str) -> Any:
        return (
            sa.select(e.edge_id, sa.func.count())
            .where(e.status == status, e.edge_id.in_(tenant_edges))
            .group_by(e.edge_id)
        )

    edges = [
        edge_cols.where(Edge.tenant_id == ids["tenant_id"]).order_by(Edge.name),
        counts("PENDING"),
        counts("FAILED"),
        sa.select(*CloudNode.__table__.c),
    ]
    one_edge = edge_cols.where(Edge.tenant_id == ids["tenant_id"], Edge.id == big)
    return {
        "edges": edges,
        "edges_all": edges,
        "show": [
            one_edge,
            sa.select(e.status, sa.func.count()).where(e.edge_id == big).group_by(e.status),
            sa.select(*EDGE_EVENT.c)
            .where(e.edge_id == big, e.type == "_sync")
            .order_by(e.seq.desc())
            .limit(1),
        ],
        "page": [one_edge, page.where(e.edge_id == big)],
        "failed": [one_edge, page.where(e.edge_id == big, e.status == "FAILED")],
        "deep": [one_edge, page.where(e.edge_id == big, e.seq < ids["deep_before"])],
        "small": [
            edge_cols.where(Edge.tenant_id == ids["tenant_id"], Edge.id == small),
            page.where(e.edge_id == small),
        ],
    }


def run(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    backend = sa.engine.make_url(url).get_backend_name()
    result: dict[str, Any] = {
        "scenario": "console",
        "database": backend,
        "edges": args.edges,
        "events": args.events,
        "big_edge_events": args.big,
        "requests": args.requests,
        "cores": os.cpu_count(),
        "load_start": round(os.getloadavg()[0], 2),
    }
    node = Node(url, platform=make_plugin_manager())
    node.init_cloud("ce")
    progress(f"creating {args.edges:,} edges")
    t0 = time.perf_counter()
    ids = seed(node, args)
    result["seed_s"] = round(time.perf_counter() - t0, 2)
    result["copy_s"] = round(ids["write_s"], 2)
    result["big_edge_failed"] = ids["big_failed"]
    ids["deep_before"] = PAGE + 1  # the last page: the stream's first 50 events
    big, small = ids["big"], ids["small"]
    endpoints = {
        "edges": (f"edges list ({CONNECTED} connected)", "/api/v1/edges"),
        "edges_all": (f"edges list (all {args.edges:,} connected)", "/api/v1/edges"),
        "show": ("big edge's show", f"/api/v1/edges/{big}"),
        "page": ("big edge's downlinks, first page", f"/api/v1/edges/{big}/downlinks?limit={PAGE}"),
        "failed": ("big edge's downlinks, status=failed", f"/api/v1/edges/{big}/downlinks?status=failed&limit={PAGE}"),
        "deep": ("big edge's downlinks, last page", f"/api/v1/edges/{big}/downlinks?limit={PAGE}&before={ids['deep_before']}"),
        "small": ("small edge's downlinks, first page", f"/api/v1/edges/{small}/downlinks?limit={PAGE}"),
    }  # fmt: skip
    heartbeat = Heartbeat(node, ids["node_id"])
    proc, base, how = start_console(url, tmp, args.server)
    result["server"] = how
    try:
        headers = {"Authorization": f"Bearer {ids['token']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            listed = client.get("/api/v1/edges").json()
            assert len(listed) == args.edges, len(listed)
            result["connected_listed"] = sum(1 for e in listed if e["connected"])
            n_small = len(client.get(endpoints["small"][1]).json())
            assert n_small == min(PAGE, ids["small_events"]), n_small
            progress("raw limits: a 404 and /me of the same server")
            floor_404, _ = http_series(client, "/api/v1/bench-nothing", args.requests, args.budget, 404)
            floor_me, _ = http_series(client, "/api/v1/me", args.requests, args.budget)
            result["raw_ms"] = {"http_404": percentiles(floor_404), "me": percentiles(floor_me)}
            figures: dict[str, Any] = {}
            for key, (what, path) in endpoints.items():
                if key == "edges_all":  # the fleet as it should be: every edge's link up
                    with node.db.engine.begin() as conn:
                        conn.execute(sa.update(Edge).values(node_id=ids["node_id"]))
                    assert all(e["connected"] for e in client.get(path).json())
                progress(f"{what}: {args.requests} requests")
                samples, size = http_series(client, path, args.requests, args.budget)
                figures[key] = {"what": what.strip(), "path": path, "bytes": size, "n": len(samples)}
                figures[key].update(percentiles(samples))
                if key == "edges_all":
                    with node.db.engine.begin() as conn:
                        conn.execute(
                            sa.update(Edge)
                            .where(Edge.id.not_in(ids["edge_ids"][:CONNECTED]))
                            .values(node_id=None)
                        )
        progress("raw limits: the same statements through SQLAlchemy Core")
        with node.db.engine.connect() as conn:
            for key, stmts in sql_statements(ids).items():

                def run_all(stmts: list[Any] = stmts) -> None:
                    with conn.begin():
                        for stmt in stmts:
                            conn.execute(stmt).all()

                figures[key]["sql"] = percentiles(timed(run_all, args.requests, args.budget))
    finally:
        stop(proc)
        heartbeat.close()
        node.close()
    for f in figures.values():
        f["under_50ms"] = {"p50": f["p50"] < LIMIT_MS, "p95": f["p95"] < LIMIT_MS}
    result["endpoints"] = figures
    result["load_end"] = round(os.getloadavg()[0], 2)
    return result


def report(r: dict[str, Any]) -> None:
    print(
        f"machine: {r['cores']} cores, Python {pyplatform.python_version()}; cloud on {r['database']};"
        f" console: {r['server']} (own process); load {r['load_start']:.2f} -> {r['load_end']:.2f}"
    )
    print(
        f"{r['edges']:,} edges, {r['events']:,} downlinks ({r['big_edge_events']:,} on the big edge,"
        f" {r['big_edge_failed']} of them failed); seeded in {r['seed_s']} s (downlinks written in"
        f" {r['copy_s']} s); {r['connected_listed']} edges connected; {r['requests']} requests each"
    )
    raw = r["raw_ms"]
    print(
        f"raw limit: a 404 of the same server p50 {raw['http_404']['p50']} ms (p95 {raw['http_404']['p95']});"
        f" GET /api/v1/me (token checked, user read) p50 {raw['me']['p50']} ms (p95 {raw['me']['p95']})"
    )
    print(
        f"\n{'endpoint':<40} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  {'< 50 ms':<9}"
        f" {'bare SQL p50':>12} {'bytes':>8}"
    )
    for f in r["endpoints"].values():
        ok = "yes" if all(f["under_50ms"].values()) else ("p50 only" if f["under_50ms"]["p50"] else "NO")
        print(
            f"{f['what']:<40} {f['n']:>4} {f['p50']:>7.2f} {f['p95']:>7.2f} {f['p99']:>7.2f} {f['max']:>7.2f}  {ok:<9}"
            f" {f['sql']['p50']:>12.2f} {f['bytes']:>8,}"
        )
    print("(ms; bare SQL: the statements of the endpoint's own data through SQLAlchemy Core in this process)")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench console")
    ap.add_argument("--edges", type=int, default=1_000, help="edges of the tenant")
    ap.add_argument("--events", type=int, default=100_000, help="downlinks in all")
    ap.add_argument("--big", type=int, default=20_000, help="downlinks of the big edge (of --events)")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per endpoint")
    ap.add_argument(
        "--budget",
        type=float,
        default=8.0,
        help="seconds per endpoint: fewer requests past it (at least 20)",
    )
    ap.add_argument(
        "--cloud-db", default=None, help="cloud database URL, a new one (default: a new PostgreSQL database)"
    )
    ap.add_argument(
        "--server",
        choices=("console", "uvicorn"),
        default="console",
        help="console: `winstar console`, as deployed; uvicorn: uvicorn.run(make_app(...)) on HOST, PORT",
    )
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.edges < 2 or not 0 < args.big < args.events:
        ap.error("needs --edges >= 2 and 0 < --big < --events")
    result = run_on_a_new_database(args, "console", run)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
