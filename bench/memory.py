"""Memory stays flat: `python -m bench memory`.

    python -m bench memory [--events 200000] [--entities 100000] [--pg-server URL] [--timeline] [--json]

A cloud node (`winstar run --listen`, a process, on a fresh PostgreSQL database) and an edge
(`winstar run`, a process, on SQLite), over real gRPC on loopback. The resident memory (VmRSS in
/proc) of both processes is sampled every 0.2 s, and the kernel's own high-water mark (VmHWM:
the peak since the process started, every page counted) read at the end of each phase:

a. **drain**: ``--events`` assets imported cloud-side and assigned to the edge while it is
   offline (`winstar entity import`'s service, 20,000 a transaction: one ``ADDED`` downlink
   each), then the edge started and the backlog drained to it;
b. **Sync Edge**: ``--entities`` devices imported and assigned to a second edge, their ``ADDED``
   downlinks deleted (so that the sync alone brings them: the digest of an empty edge differs in
   every bucket and the cloud sends every entity), its edge process started, the sync requested
   (`winstar edge sync`: ``request_sync``; the node runs it when due) and waited for until its
   outcome is done and the edge holds every device. The cloud process is the same one as in (a).

Printed: each process's RSS at the start of the phase, its sampled peak and VmHWM, against the
150 MB target; the drain rate and the sync's seconds; the raw insert rate of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.__main__ import (
    DEFAULT_PG,
    Processes,
    progress,
    raw_insert_rate,
    run_on_a_new_database,
)
from bench.fanout import rss_kb
from bench.growth import connect_once, drain_edge, import_assigned, new_cloud, real_edge
from winstar_core.node import Node
from winstar_core.store.models import EdgeEvent, Entity, now_ms
from winstar_core.transport.inprocess import wait_for

TARGET_MB = 150
SAMPLE_S = 0.2


def hwm_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """RSS of named processes every :data:`SAMPLE_S` seconds, in a thread, until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start_kb = {k: rss_kb(p) for k, p in pids.items()}
        self.peak_kb = dict(self.start_kb)
        self.samples = 0
        #: (seconds since the start, {name: RSS kB}) every sample (``--timeline``)
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self._t0 = time.perf_counter()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            now = {k: rss_kb(p) for k, p in self.pids.items()}
            for k, kb in now.items():
                self.peak_kb[k] = max(self.peak_kb[k], kb)
            self.timeline.append((round(time.perf_counter() - self._t0, 1), now))
            self.samples += 1
            self._halt.wait(SAMPLE_S)

    def stop(self) -> dict[str, dict[str, float]]:
        self._halt.set()
        self._thread.join()
        return {
            k: {
                "start_mb": round(self.start_kb[k] / 1024, 1),
                "peak_mb": round(self.peak_kb[k] / 1024, 1),
                "hwm_mb": round(hwm_kb(p) / 1024, 1),
                "under_target": max(self.peak_kb[k], hwm_kb(p)) / 1024 < TARGET_MB,
            }
            for k, p in self.pids.items()
        }


def held(edge: Node) -> int:
    with edge.db.read() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(Entity)) or 0)


def run(args: argparse.Namespace, cloud_url: str, tmp: Path) -> dict[str, Any]:
    raw = raw_insert_rate(cloud_url, 20_000)
    cloud = new_cloud(cloud_url)
    result: dict[str, Any] = {
        "events": args.events,
        "entities": args.entities,
        "raw_insert_rows_per_s": round(raw),
        "target_mb": TARGET_MB,
    }
    edges: list[Node] = []
    link: Processes | None = None
    try:
        # a. the drain
        edge_id, edge, link = real_edge(cloud, "edge-drain", tmp)
        edges.append(edge)
        connect_once(link, edge)
        since = now_ms()
        write_s = import_assigned(cloud, "asset", "asset", args.events, "edge-drain")
        progress(f"draining {args.events:,} events")
        result["drain"] = _drain_phase(args, cloud, link, edge_id, edge, since, write_s)

        # b. the Sync Edge
        progress(f"importing {args.entities:,} devices for the sync")
        with cloud.cloud() as c:
            row, secret = c.create_edge("edge-sync", c.find_tenant("Bench"))
            sync_id, key = row.id, row.routing_key
        imp_s = import_assigned(cloud, "device", "device", args.entities, "edge-sync")
        with cloud.db.begin() as s:  # the sync alone brings the edge its state
            s.execute(sa.delete(EdgeEvent).where(EdgeEvent.edge_id == sync_id))
        folder = tmp / "edge-sync"
        folder.mkdir()
        edge_b = Node(f"sqlite:///{folder / 'edge.db'}", platform=cloud.platform)
        edges.append(edge_b)
        edge_b.init_edge(link.cloud_addr, key, secret)
        link.edge = edge_b
        result["sync"] = _sync_phase(args, cloud, link, sync_id, edge_b, imp_s)
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


def _drain_phase(
    args: argparse.Namespace,
    cloud: Node,
    link: Processes,
    edge_id: uuid.UUID,
    edge: Node,
    since: int,
    write_s: float,
) -> dict[str, Any]:
    holder: dict[str, Any] = {}
    original = link.start_edge

    def start_and_sample() -> None:  # the sampler starts with the edge process
        original()
        assert link.edge_proc is not None
        holder["sampler"] = Sampler({"cloud": link.cloud.pid, "edge": link.edge_proc.pid})

    link.start_edge = start_and_sample  # type: ignore[method-assign]
    try:
        n, drain_s, wall_s = drain_edge(link, cloud, edge_id, "asset", since)
    finally:
        link.start_edge = original  # type: ignore[method-assign]
    rss = holder["sampler"].stop()
    link.stop_edge()
    assert n == held(edge) == args.events, (n, held(edge), args.events)
    return {
        "events": n,
        "import_s": round(write_s, 1),
        "drain_s": round(drain_s, 2),
        "events_per_s": round(n / drain_s),
        "wall_s": round(wall_s, 2),
        "rss": rss,
        "samples": holder["sampler"].samples,
        "load": round(os.getloadavg()[0], 2),
    }


def _sync_phase(
    args: argparse.Namespace, cloud: Node, link: Processes, sync_id: uuid.UUID, edge: Node, imp_s: float
) -> dict[str, Any]:
    t0 = time.perf_counter()
    link.start_edge()
    assert link.edge_proc is not None
    sampler = Sampler({"cloud": link.cloud.pid, "edge": link.edge_proc.pid})

    def configured() -> bool:
        with edge.edge() as ed:
            return ed.edition is not None

    wait_for(configured, timeout=120, interval=0.05, what="the edge's first connect")
    progress(f"Sync Edge of {args.entities:,} devices")
    t1 = time.perf_counter()
    with cloud.cloud() as c:
        c.request_sync(c.find_edge(sync_id))

    def synced() -> dict[str, Any] | None:
        with cloud.cloud() as c:
            out = c.sync_outcome(c.find_edge(sync_id))
        return out if out["state"] in ("done", "failed") and held(edge) >= args.entities else None

    outcome = wait_for(synced, timeout=1800, interval=0.2, what="the sync")
    sync_s = time.perf_counter() - t1
    rss = sampler.stop()
    link.stop_edge()
    return {
        "entities": held(edge),
        "import_s": round(imp_s, 1),
        "state": outcome["state"],
        "sync_s": round(sync_s, 2),
        "entities_per_s": round(held(edge) / sync_s),
        "from_edge_start_s": round(time.perf_counter() - t0, 2),
        "bytes": outcome["bytes"],
        "rss": rss,
        "samples": sampler.samples,
        "timeline_mb": [(t, {k: round(kb / 1024) for k, kb in v.items()}) for t, v in sampler.timeline[::5]],
        "load": round(os.getloadavg()[0], 2),
    }


def report(r: dict[str, Any]) -> None:
    print(
        f"Memory: cloud node and edge as `winstar run` processes, cloud on PostgreSQL, edge on SQLite,"
        f" real gRPC ({os.cpu_count()} cores); RSS sampled every {SAMPLE_S} s, VmHWM at the end"
    )
    print(f"  raw limit: the cloud database inserts {r['raw_insert_rows_per_s']:,} rows/s (one transaction)")
    d, s = r["drain"], r["sync"]
    print(
        f"  a. drain of {d['events']:,} downlink events (imported in {d['import_s']} s): {d['drain_s']} s ="
        f" {d['events_per_s']:,} events/s ({d['wall_s']} s from the edge's start; load {d['load']})"
    )
    _rss_lines(d["rss"], d["samples"])
    print(
        f"  b. Sync Edge bringing {s['entities']:,} devices to an empty edge (imported in {s['import_s']} s):"
        f" {s['sync_s']} s from the request = {s['entities_per_s']:,} entities/s, {s['bytes']:,} bytes,"
        f" {s['state']} ({s['from_edge_start_s']} s from the edge's start; load {s['load']})"
    )
    _rss_lines(s["rss"], s["samples"])
    if r.get("timeline"):
        print(
            "     RSS during the sync (MB, every second): "
            + ", ".join(f"{t}s {v['cloud']}/{v['edge']}" for t, v in s["timeline_mb"])
        )
    ok = all(v["under_target"] for ph in (d, s) for v in ph["rss"].values())
    print(f"  target: every process under {r['target_mb']} MB in both phases: {'met' if ok else 'MISSED'}")


def _rss_lines(rss: dict[str, dict[str, Any]], samples: int) -> None:
    for name, v in rss.items():
        start = f"RSS {v['start_mb']} MB at the start" if v["start_mb"] else "a new process"
        print(
            f"     {name:<5}: {start}, sampled peak {v['peak_mb']} MB,"
            f" VmHWM {v['hwm_mb']} MB ({'under' if v['under_target'] else 'OVER'} {TARGET_MB} MB;"
            f" {samples} samples)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench memory")
    ap.add_argument("--events", type=int, default=200_000, help="downlink events drained")
    ap.add_argument("--entities", type=int, default=100_000, help="entities a Sync Edge brings")
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--timeline", action="store_true", help="print the RSS of both processes during the sync")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_on_a_new_database(args, "memory", run)
    result["timeline"] = args.timeline
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
