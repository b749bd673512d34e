"""Hostile load on a real cloud process: one tenant's flood against another tenant's edge.

    python -m bench.fairness [--floods 6] [--batch 2000] [--probes 30] [--seconds 5]

A `winstar run` cloud on a new PostgreSQL database, listening on every address. Three phases:

1. quiet: tenant B's edge (a `winstar run` process on SQLite) creates devices one at a time; each
   is timed from its commit on the edge to its row in the cloud;
2. apply flood: ``--floods`` raw gRPC edges of tenant A send batch after batch of ``--batch``
   uplinks that all fail (each applied in its own savepoint and refused: the most work one message
   can cost), while B times its devices again;
3. auth flood: four clients from ::1 send wrong secrets as fast as the cloud answers for
   ``--seconds``, while a good session of tenant B connects from 127.0.0.1 again and again (time
   to its Welcome); the cloud's CPU is read from /proc.

Prints each figure with the raw limit of the same run (PostgreSQL's insert rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench.__main__ import DEFAULT_PG, create_pg_database, drop_pg_database, progress, raw_insert_rate
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.store.models import Entity
from winstar_core.transport.inprocess import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import Proc, free_port  # noqa: E402
from raw_peer import RawCall, credentials, device_added, hello, uplinks  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(samples: list[float]) -> str:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"p50 {statistics.median(samples):,.0f} ms, p99 {p99:,.0f} ms, max {samples[-1]:,.0f} ms"


def time_devices(edge: Node, cloud: Node, n: int, prefix: str) -> list[float]:
    out = []
    for i in range(n):
        with edge.edge() as e:
            device = e.create_entity("device", f"{prefix}-{i}", None, user_email="admin@b.io")
        t0 = time.perf_counter()

        def arrived(device_id: uuid.UUID = device.id) -> bool:
            with cloud.db.read() as conn:
                return conn.scalar(sa.select(Entity.id).where(Entity.id == device_id)) is not None

        wait_for(arrived, timeout=600, interval=0.002)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fairness")
    ap.add_argument("--floods", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="winstar-fair-"))
    made = create_pg_database(args.pg_server)
    if made is None:
        raise SystemExit("this benchmark needs PostgreSQL")
    cloud_url, db_name = made
    print(f"machine: {os.cpu_count()} cores; cloud: a `winstar run` process on PostgreSQL")
    print(f"raw limit: PostgreSQL inserts {raw_insert_rate(cloud_url, 20_000):,.0f} rows/s")

    platform = make_plugin_manager()
    cloud = Node(cloud_url, platform=platform)
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        a = c.create_tenant("A")
        flooders = [c.create_edge(f"A{i}", a) for i in range(args.floods)]
        b = c.create_tenant("B")
        c.create_user("admin@b.io", b, "TENANT_ADMIN")
        good, good_secret = c.create_edge("B1", b)
        probe, probe_secret = c.create_edge("B2", b)  # raw sessions that time a connect
        a_id = a.id
    port = free_port()
    cloud_proc = Proc(cloud.url, tmp / "cloud.log", "--listen", f"[::]:{port}").start()
    edge = Node(f"sqlite:///{tmp / 'b.db'}", platform=platform)
    edge.init_edge(f"127.0.0.1:{port}", good.routing_key, good_secret)
    edge_proc = Proc(edge.url, tmp / "edge.log").start()
    try:
        wait_for(lambda: edge.role() and _configured(edge), timeout=60, interval=0.05)
        progress("quiet phase")
        quiet = time_devices(edge, cloud, args.probes, "quiet")
        print(f"tenant B, quiet: device commit on the edge -> row in the cloud: {summary(quiet)}")

        progress("apply flood")
        stop = threading.Event()
        rejected = [0]
        acked: list[tuple[float, int]] = []

        def flood(row, secret) -> None:
            call = RawCall(f"127.0.0.1:{port}", credentials(row.routing_key, secret))
            call.send(hello())
            call.recv_kind("welcome")
            seq = 0
            while not stop.is_set():
                events = [
                    device_added(seq + i, a_id, f"x{seq + i}", payload=b'{"label": 7}')
                    for i in range(1, args.batch + 1)
                ]
                seq += args.batch
                call.send(uplinks(*events))
                ack = call.recv_kind("uplink_ack", timeout=600).uplink_ack
                rejected[0] += len(ack.results)
                acked.append((time.perf_counter(), len(ack.results)))
            call.close()

        threads = [threading.Thread(target=flood, args=f, daemon=True) for f in flooders]
        for t in threads:
            t.start()
        wait_for(lambda: rejected[0] > 0, timeout=300)
        flooded = time_devices(edge, cloud, args.probes, "flooded")
        stop.set()
        for t in threads:
            t.join(600)
        rate = sum(n for _, n in acked[1:]) / max(acked[-1][0] - acked[0][0], 1e-6) if len(acked) > 1 else 0.0
        print(
            f"tenant B, while {args.floods} edges of tenant A flood ({args.batch:,} failing events a batch,"
            f" {rate:,.0f} events/s refused): {summary(flooded)}"
        )

        progress("auth flood")
        assert cloud_proc.p is not None
        pid = cloud_proc.p.pid
        connects_quiet = _connect_times(port, probe.routing_key, probe_secret, 10)
        stop = threading.Event()
        attempts = [0]

        def guess() -> None:
            while not stop.is_set():
                call = RawCall(f"[::1]:{port}", credentials(good.routing_key, "guess"))
                call.send(hello())
                call.ended(30)
                call.close()
                attempts[0] += 1

        guessers = [threading.Thread(target=guess, daemon=True) for _ in range(4)]
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for t in guessers:
            t.start()
        time.sleep(1.0)
        connects_flood = _connect_times(port, probe.routing_key, probe_secret, 10)
        time.sleep(max(0.0, args.seconds - (time.perf_counter() - t0)))
        stop.set()
        for t in guessers:
            t.join(60)
        elapsed = time.perf_counter() - t0
        cpu = (cpu_seconds(pid) - cpu0) / elapsed * 100
        print(f"good connect (call -> Welcome), quiet: {summary(connects_quiet)}")
        print(
            f"good connect during {attempts[0] / elapsed:,.0f} wrong secrets/s from one address:"
            f" {summary(connects_flood)}; cloud CPU {cpu:,.0f} %"
        )
    finally:
        edge_proc.stop()
        cloud_proc.stop()
        cloud.close()
        edge.close()
        drop_pg_database(args.pg_server, db_name)


def _configured(edge: Node) -> bool:
    with edge.edge() as e:
        return e.edition is not None


def _connect_times(port: int, routing_key: str, secret: str, n: int) -> list[float]:
    out = []
    instance = str(uuid.UUID(int=1))  # one box
    for _ in range(n):
        t0 = time.perf_counter()
        call = RawCall(f"127.0.0.1:{port}", credentials(routing_key, secret))
        call.send(hello(instance))
        call.recv_kind("welcome")
        out.append((time.perf_counter() - t0) * 1000)
        call.close()
    return out


if __name__ == "__main__":
    main()
