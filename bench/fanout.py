"""Fan-out to many edges held by two cloud nodes: `python -m bench fanout`.

    python -m bench fanout [--edges 1000] [--generators 2] [--updates 3] [--idle-seconds 20]
                           [--client-poll 2.0] [--ramp 0] [--default-poll-seconds 10]
                           [--cloud-db URL] [--share-connections] [--profile] [--keep]

The cloud runs as two `winstar run --node-name n1/n2` processes on one PostgreSQL database; the
edges are ``--edges`` SQLite databases in a temporary folder, held by ``--generators`` load
generator processes, each running its share of real :class:`EdgeClient`\\ s on one asyncio loop
(half of each generator's edges list node 1's address first, half node 2's). Everything talks
real gRPC over 127.0.0.1. Measured, from /proc (CPU: utime+stime; memory: VmRSS):

- how long it takes to create the edges (one transaction), their databases and to connect them;
- idle: the CPU of each node, of the generators and of PostgreSQL over ``--idle-seconds`` with
  nothing to send, the cloud database's transactions in that time, and the RSS of each node
  before and after its sessions connected (memory per idle session) and of each generator before
  and after its clients started (memory per client);
- fan-out: one dashboard assigned directly to every edge (assignments written in one
  transaction before anything connects); each of ``--updates`` single updates of it is timed from
  its commit to the acknowledgement of its event by every edge (``delivered_time`` of its
  ``edge_event`` rows: the sender's clock, after the edge applied and committed it), then every
  edge database is checked for the new version.

The clients start all at once (as after a restart of the cloud), or ``--ramp`` a second. Where a
generator differs from an edge on its own box, and why:

- the edge client polls its SQLite outbox every 50 ms by default, which is nothing for one edge
  on its own box but 20,000 queries a second for 1,000 clients in one process: the generators set
  the client's ``poll_interval`` to ``--client-poll`` (2 s, the client's value on PostgreSQL), and
  a last phase measures them at the client's default for ``--default-poll-seconds``;
- ``--client-heartbeat``: each client writes its link heartbeat (which `winstar status` reads) to
  its database every 5 s by default; 1,000 clients on this machine do 200 SQLite writes a second
  for it, which a box of its own would not notice;
- every client gets its own TCP connection (``grpc.use_local_subchannel_pool``): in one process
  gRPC shares one connection per target among all channels, and a node refuses a connection's
  17th stream (``--share-connections`` keeps gRPC's default, to see it).

``--profile`` runs the nodes and the generators under yappi (``pip install yappi``; CPU clock, every thread) for an
idle window and for the fan-outs, and the first update's transaction under cProfile, and prints
where the CPU went and which transactions ran how often (pstat files in the temporary folder).

Prints each figure next to the raw limits measured in the same run (the databases' insert rates,
the machine's CPU use before anything of the benchmark runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import cProfile
import json
import logging
import os
import platform as pyplatform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.__main__ import DEFAULT_PG, create_pg_database, drop_pg_database, progress, raw_insert_rate
from winstar_core.node import Node
from winstar_core.plugin.manager import Platform, make_plugin_manager
from winstar_core.store import migrate
from winstar_core.store.db import make_engine
from winstar_core.store.models import CloudNode, Edge, EdgeEvent, now_ms
from winstar_core.transport.inprocess import wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- /proc ------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine (their CPU is the cloud database's)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    out.append(int(entry.name))
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already in user
    return total - idle, total


Pids = list[int] | Callable[[], list[int]]


@dataclass
class CpuWindow:
    """CPU seconds of named groups of processes (and share of the whole machine busy) between
    start and stop. A group is a list of pids, or a function listing them at each end (PostgreSQL's
    backends come and go: one born in the window counts whole, one gone before its end is lost)."""

    pids: Mapping[str, Pids]
    started: float = 0.0
    seconds: float = 0.0
    used: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0  # share of all cores busy, 0..1
    _t0: dict[str, dict[int, float]] = field(default_factory=dict)
    _m0: tuple[int, int] = (0, 0)
    _last: dict[str, dict[int, float]] = field(default_factory=dict)

    def _snapshot(self, group: Pids) -> dict[int, float]:
        pids = group() if callable(group) else group
        return {pid: t for pid in pids if (t := cpu_seconds(pid)) > 0}

    def start(self) -> CpuWindow:
        self._t0 = {k: self._snapshot(v) for k, v in self.pids.items()}
        self._last = {k: dict(v) for k, v in self._t0.items()}
        self._m0 = machine_ticks()
        self.started = time.perf_counter()
        return self

    def sample(self) -> None:
        """Note every process's CPU now (before killing one: a dead process's CPU reads 0)."""
        for k, v in self.pids.items():
            self._last.setdefault(k, {}).update(self._snapshot(v))

    def stop(self) -> CpuWindow:
        self.seconds = time.perf_counter() - self.started
        self.sample()
        for k in self.pids:
            before = self._t0.get(k, {})
            self.used[k] = sum(t - before.get(pid, 0.0) for pid, t in self._last[k].items())
        busy, total = machine_ticks()
        self.machine = (busy - self._m0[0]) / max(total - self._m0[1], 1)
        return self

    def pct(self, name: str) -> float:
        """CPU of ``name`` in % of one core."""
        return 100 * self.used[name] / max(self.seconds, 1e-9)


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = ", " + line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return (
        f"machine: {os.cpu_count()} cores{model}, {mem:,} MB RAM, Python {pyplatform.python_version()},"
        f" {pyplatform.machine()}"
    )


def code_line() -> str:
    """The commit the benchmark runs (read-only git), and whether the core differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "winstar_core", "plugins"], cwd=root, timeout=10
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "code: unknown (no git)"
    return f"code: {head or 'unknown'}" + (
        " with uncommitted changes in winstar_core or plugins" if dirty else ""
    )


def other_load() -> str:
    """Other benchmark or test processes running beside this one (they make figures noisier)."""
    names = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "pytest" in cmd and "grep" not in cmd:
                    names.append(entry.name)
    return f"{len(names)} pytest process(es) running beside the benchmark" if names else "quiet"


def summary_ms(samples: Sequence[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"p50 {statistics.median(s):,.0f} ms, p99 {p99:,.0f} ms, max {s[-1]:,.0f} ms"


# -- the cloud: nodes as `winstar run` processes ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CloudNodes:
    """``n`` cloud nodes of one database, each a `winstar run --node-name nI` process."""

    def __init__(self, url: str, n: int, tmp: Path, profile: Path | None = None) -> None:
        self.url, self.tmp, self.profile = url, tmp, profile
        self.names = [f"n{i + 1}" for i in range(n)]
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, addr in zip(self.names, self.addrs, strict=True):
            with open(self.tmp / f"{name}.log", "ab") as log:
                # under --profile the node runs the same CLI inside this module's yappi wrapper
                wrap = ["bench.fanout", "--profiled-node", str(self.profile / name)] if self.profile else []
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", *(wrap or ["winstar_core"]), "--db", self.url, "run"]
                    + ["--listen", addr, "--node-name", name],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(30)

    def stop(self) -> dict[str, float]:
        """SIGTERM every live node; returns the seconds each took to stop."""
        t0 = time.perf_counter()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        took = {}
        for name, p in self.procs.items():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            took[name] = time.perf_counter() - t0
        return took

    def log_tail(self, name: str, pattern: str = "") -> list[str]:
        lines = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
        return [ln for ln in lines if pattern in ln]


def node_ids(cloud: Node) -> dict[str, uuid.UUID]:
    """Registered node name -> id."""
    with cloud.db.read() as conn:
        return {name: nid for nid, name in conn.execute(sa.select(CloudNode.id, CloudNode.name))}


def edges_per_node(cloud: Node) -> dict[uuid.UUID | None, int]:
    with cloud.db.read() as conn:
        rows = conn.execute(sa.select(Edge.node_id, sa.func.count()).group_by(Edge.node_id)).all()
    return {nid: int(n) for nid, n in rows}


def count_where(cloud: Node, model: Any, *where: Any) -> int:
    with cloud.db.read() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


def pg_transactions(cloud: Node) -> int:
    """Transactions committed and rolled back in the cloud's database so far (pg_stat_database;
    PostgreSQL updates it within a second or so)."""
    with cloud.db.read() as conn:
        return int(
            conn.scalar(
                sa.text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                )
            )
            or 0
        )


# -- the edges' databases ---------------------------------------------------------------------------


@dataclass
class EdgeDb:
    name: str
    url: str
    addrs: str

    @property
    def path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))


def make_edge_dbs(
    platform: Platform,
    tmp: Path,
    creds: Sequence[tuple[str, str, str]],
    addrs_of: Callable[[int], str],
    direct: int = 10,
) -> tuple[list[EdgeDb], float, float]:
    """One SQLite database per edge (``creds``: name, routing key, secret). The first ``direct``
    are made the ordinary way (`init_edge` on a new file: create and migrate it); the rest are
    copies of one migrated template, each then initialized with `init_edge` (which mints its own
    instance id: nothing but the schema is copied). Returns the databases and the seconds per
    edge of each way."""
    folder = tmp / "edges"
    folder.mkdir()
    out: list[EdgeDb] = []
    direct = min(direct, len(creds))
    t0 = time.perf_counter()
    for i, (name, key, secret) in enumerate(creds[:direct]):
        db = EdgeDb(name, f"sqlite:///{folder / (name + '.db')}", addrs_of(i))
        node = Node(db.url, platform=platform)
        node.init_edge(db.addrs, key, secret)
        node.close()
        out.append(db)
    direct_s = (time.perf_counter() - t0) / max(direct, 1)
    template = tmp / "template.db"
    engine = make_engine(f"sqlite:///{template}")
    migrate.upgrade(engine)
    engine.dispose()
    t0 = time.perf_counter()
    for i, (name, key, secret) in enumerate(creds[direct:], start=direct):
        db = EdgeDb(name, f"sqlite:///{folder / (name + '.db')}", addrs_of(i))
        shutil.copyfile(template, db.path)
        node = Node(db.url, platform=platform)
        node.init_edge(db.addrs, key, secret)
        node.close()
        out.append(db)
    copy_s = (time.perf_counter() - t0) / max(len(creds) - direct, 1)
    return out, direct_s, copy_s


def instance_ids(dbs: Sequence[EdgeDb]) -> set[str]:
    out = set()
    for db in dbs:
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            row = conn.execute("SELECT value FROM node_config WHERE key = 'instance_id'").fetchone()
            out.add(json.loads(row[0]) if row else "")
    return out


def edge_scalar(db: EdgeDb, sql: str, *params: Any) -> Any:
    with contextlib.closing(sqlite3.connect(db.path, timeout=60)) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


# -- load generators --------------------------------------------------------------------------------


class Generator:
    """A load-generator process holding edge clients (see :func:`generate`), and what it reports."""

    def __init__(
        self,
        index: int,
        dbs: Sequence[EdgeDb],
        tmp: Path,
        poll: float,
        share_connections: bool = False,
        ramp: float = 0.0,
        heartbeat: float = 5.0,
        profile: str | None = None,
    ) -> None:
        self.index = index
        self.dbs = list(dbs)
        spec = tmp / f"gen{index}.json"
        spec.write_text(
            json.dumps(
                {
                    "edges": [[d.url, d.addrs] for d in self.dbs],
                    "poll": poll,
                    "share_connections": share_connections,
                    "ramp": ramp,
                    "heartbeat": heartbeat,
                    "profile": profile,
                    "log": str(tmp / f"gen{index}.log"),
                }
            )
        )
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.fanout", "--generate", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(tmp / f"gen{index}.err", "ab"),  # noqa: SIM115 - the child writes it
            text=True,
            bufsize=1,
        )
        self.reports: dict[str, dict[str, Any]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                self.reports[msg["event"]] = msg

    @property
    def pid(self) -> int:
        return self.p.pid

    def connected(self) -> int:
        return int(self.reports.get("state", {}).get("connected", 0))

    def command(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self, timeout: float = 120) -> dict[str, Any]:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
        self._reader.join(5)
        return self.reports.get("done", {})


def split(dbs: Sequence[EdgeDb], k: int) -> list[list[EdgeDb]]:
    """``k`` shares, interleaved (each gets its half of edges listing node 1 first)."""
    return [list(dbs[i::k]) for i in range(k)]


def generate(spec_path: str) -> None:
    """The load generator's process: every edge of the spec as an :class:`EdgeClient` on one
    asyncio loop, until SIGTERM. Reports JSON lines on stdout (``base`` and ``ready`` with its RSS,
    ``state`` every second, ``done`` with the reasons of the links that went down); reads commands
    on stdin (``poll SECONDS``: every client's outbox poll interval)."""
    spec = json.loads(Path(spec_path).read_text())
    downs: Counter[str] = Counter()

    class CountDowns(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("link down ("):
                downs[msg[len("link down (") :].split(":", 1)[0].split(")", 1)[0][:60]] += 1

    class EdgeName(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.edge = EDGE_NAME.get()
            return True

    logging.basicConfig(
        filename=spec["log"],
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(edge)s] %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(EdgeName())
    logging.getLogger().addHandler(CountDowns())
    asyncio.run(_generate(spec, downs))


#: the edge a generator's client task serves (its log lines name it)
EDGE_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("edge", default="-")


def _emit(event: str, **kw: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **kw}), flush=True)


async def _generate(spec: dict[str, Any], downs: Counter[str]) -> None:
    from winstar_core.transport import client as client_module
    from winstar_core.transport.client import CLIENT_OPTIONS, EdgeClient

    # each client writes its link heartbeat to its database every HEARTBEAT_S (5 s): nothing for
    # a box of its own, 200 SQLite writes a second for 1,000 clients sharing this machine
    client_module.HEARTBEAT_S = float(spec.get("heartbeat") or client_module.HEARTBEAT_S)
    if spec.get("profile"):
        profiled(spec["profile"])
    loop = asyncio.get_running_loop()
    if not spec.get("share_connections"):
        # one TCP connection per client, as separate boxes have: in one process gRPC otherwise
        # shares one connection per target among all channels (its global subchannel pool), and
        # the node refuses a connection's 17th stream (max_concurrent_streams)
        CLIENT_OPTIONS.append(("grpc.use_local_subchannel_pool", 1))
    platform = make_plugin_manager()
    _emit("base", rss_kb=rss_kb(os.getpid()))
    clients = []
    for url, addrs in spec["edges"]:
        client = EdgeClient(Node(url, platform=platform), addrs)
        client.poll_interval = float(spec["poll"])
        clients.append(client)
    _emit("ready", rss_kb=rss_kb(os.getpid()), clients=len(clients))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def set_poll(seconds: float) -> None:
        for c in clients:
            c.poll_interval = seconds
            sender = c._sender  # the running session's sender reads it at its next wait
            if sender is not None:
                sender.poll_interval = seconds
                sender.wake()

    def commands() -> None:
        for line in sys.stdin:
            word, _, arg = line.strip().partition(" ")
            if word == "poll":
                loop.call_soon_threadsafe(set_poll, float(arg))

    threading.Thread(target=commands, daemon=True).start()
    tasks: list[asyncio.Task[None]] = []
    ramp = float(spec.get("ramp") or 0)

    async def start_all() -> None:
        for (url, _), c in zip(spec["edges"], clients, strict=True):
            context = contextvars.copy_context()  # the client's log lines name its edge
            context.run(EDGE_NAME.set, Path(url).stem)
            tasks.append(loop.create_task(c.run(stop), context=context))
            if ramp:
                await asyncio.sleep(1 / ramp)

    starting = loop.create_task(start_all())
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        _emit(
            "state",
            connected=sum(c.connected.is_set() for c in clients),
            sessions=sum(c.sessions for c in clients),
            rss_kb=rss_kb(os.getpid()),
        )
    t0 = time.perf_counter()
    starting.cancel()
    await asyncio.wait(tasks, timeout=60)
    _emit("done", link_down=dict(downs), stop_s=time.perf_counter() - t0)


# -- profiles ---------------------------------------------------------------------------------------


def profiled(prefix: str) -> None:
    """In a node's process: SIGUSR1 starts yappi (CPU clock, every thread), SIGUSR2 stops it and
    writes ``PREFIX.K.pstat`` (then ``PREFIX.K.done``), K counting the windows from 1."""
    import yappi

    yappi.set_clock_type("cpu")
    windows = [0]

    def start(*_: Any) -> None:
        yappi.clear_stats()
        yappi.start()

    def stop(*_: Any) -> None:
        yappi.stop()
        windows[0] += 1
        yappi.get_func_stats().save(f"{prefix}.{windows[0]}.pstat", type="pstat")
        Path(f"{prefix}.{windows[0]}.done").touch()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def run_profiled_node(argv: Sequence[str]) -> None:
    """``--profiled-node PREFIX WINSTAR-ARGS...``: the `winstar` CLI under :func:`profiled`."""
    profiled(argv[0])
    sys.argv = ["winstar", *argv[1:]]
    from winstar_core.cli import main as cli

    cli()


def _package(file: str, fn: str) -> str:
    """Where a profiled function lives, coarsely: a site package, a winstar module, a standard
    library module, or a builtin by name."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/winstar_core/" in file:
        return "winstar_core." + file.split("/winstar_core/", 1)[1].removesuffix(".py").replace("/", ".")
    if "/bench/" in file:
        return "bench"
    if "/lib/python3" in file:
        return file.split("/lib/python3", 1)[1].split("/", 2)[1].removesuffix(".py")
    return fn if len(fn) < 70 else fn[:67] + "..."


def profile_summary(path: Path, top: int = 8) -> list[str]:
    """Lines summing a pstat file: CPU by package (own time), and the winstar functions with the
    most time under them (cumulative, every thread)."""
    import pstats

    stats: Any = pstats.Stats(str(path))
    total = max(stats.total_tt, 1e-9)
    by: Counter[str] = Counter()
    mine: list[tuple[float, int, str]] = []
    for (file, line, fn), (_cc, calls, tt, ct, _callers) in stats.stats.items():
        by[_package(file, fn)] += tt
        if "/winstar_core/" in file:
            mine.append((ct, calls, f"{_package(file, fn).removeprefix('winstar_core.')}.{fn}:{line}"))
    mine.sort(reverse=True)
    # the functions that each run one database transaction (Database.read and .begin are
    # generators: a profiler counts each of their resumptions)
    one_txn = (".fetch", ".acknowledge", ".pending", ".hold", "._tick", "._beat", "._on_connect")
    db_calls = sorted(
        (
            (calls, name.rsplit(":", 1)[0])
            for _ct, calls, name in mine
            if name.rsplit(":", 1)[0].endswith(one_txn)
        ),
        reverse=True,
    )
    return [
        f"{total:.2f}s CPU profiled; own time by package: "
        + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in by.most_common(top)),
        "winstar functions by time under them: "
        + ", ".join(f"{name} {ct:.2f}s/{calls} calls" for ct, calls, name in mine[:top]),
        "transactions by: " + ", ".join(f"{name} {calls}" for calls, name in db_calls[:top]),
    ]


def start_profiles(pids: dict[str, int]) -> None:
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR1)


def collect_profiles(pids: dict[str, int], folder: Path, window: int, what: str) -> None:
    """Stop the profilers of ``pids`` (name -> pid) and print their summaries of ``window``."""
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR2)
    for name in pids:
        done = folder / f"{name}.{window}.done"
        wait_for(done.exists, timeout=120, interval=0.2, what=name)
        for line in profile_summary(folder / f"{name}.{window}.pstat"):
            print(f"profile {name}, {what}: {line}")


# -- the benchmark ----------------------------------------------------------------------------------


def rotate(addrs: Sequence[str], i: int) -> str:
    """Edge ``i``'s address list: all nodes, starting with node ``i mod n``."""
    k = i % len(addrs)
    return ",".join([*addrs[k:], *addrs[:k]])


@contextlib.contextmanager
def cloud_database(args: argparse.Namespace, tmp: Path) -> Iterator[str]:
    """The cloud's database: ``--cloud-db``, or a new PostgreSQL database dropped at the end."""
    if args.cloud_db:
        yield args.cloud_db
        return
    made = create_pg_database(args.pg_server)
    if made is None:
        raise SystemExit("this benchmark needs PostgreSQL (--pg-server or --cloud-db)")
    try:
        yield made[0]
    finally:
        with contextlib.suppress(Exception):
            drop_pg_database(args.pg_server, made[1])


def print_raw_limits(cloud_url: str, tmp: Path) -> None:
    raw_cloud = raw_insert_rate(cloud_url, 20_000)
    raw_edge = raw_insert_rate(f"sqlite:///{tmp / 'raw.db'}", 20_000)
    window = CpuWindow({}).start()
    time.sleep(3)
    window.stop()
    print(
        f"raw limit: cloud database inserts {raw_cloud:,.0f} rows/s; edge SQLite inserts {raw_edge:,.0f} rows/s;"
        f" machine busy {100 * window.machine:.1f} % before the benchmark starts anything ({other_load()})"
    )


def wait_connected(
    cloud: Node,
    n: int,
    gens: Sequence[Generator],
    timeout: float,
    what: str,
    halfway: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Wait until ``n`` edge rows name a serving node and the generators hold ``n`` connected
    clients; returns the seconds to each. ``halfway`` is called once half of them are served."""
    t0 = time.perf_counter()
    rows_s = clients_s = 0.0
    last = 0.0
    while True:
        held = n - edges_per_node(cloud).get(None, 0)
        conn = sum(g.connected() for g in gens)
        now = time.perf_counter() - t0
        if halfway is not None and held >= n / 2:
            halfway()
            halfway = None
        if held >= n and not rows_s:
            rows_s = now
        if conn >= n and not clients_s:
            clients_s = now
        if rows_s and clients_s:
            return rows_s, clients_s
        if now - last >= 5:
            progress(f"{what}: {held} edge rows served, {conn} clients connected after {now:.0f}s")
            last = now
        if now > timeout:
            raise TimeoutError(f"{what}: only {held} of {n} edges served after {timeout:.0f}s")
        time.sleep(0.25)


def exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark through its cleanup (children stopped, database dropped)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--profiled-node"]:
        run_profiled_node(argv[1:])
        return
    ap = argparse.ArgumentParser(prog="python -m bench fanout")
    ap.add_argument("--generate", help=argparse.SUPPRESS)  # the load generator's own process
    ap.add_argument("--edges", type=int, default=1000)
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes")
    ap.add_argument("--updates", type=int, default=3, help="single updates fanned out and timed")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--client-poll", type=float, default=2.0, help="the clients' outbox poll (s)")
    ap.add_argument(
        "--client-heartbeat",
        type=float,
        default=5.0,
        help="seconds between a client's writes of its link heartbeat to its database (its default: 5)",
    )
    ap.add_argument(
        "--default-poll-seconds",
        type=float,
        default=10.0,
        help="measure the generators with the client's default 50 ms poll for this long (0: skip)",
    )
    ap.add_argument("--connect-timeout", type=float, default=600.0)
    ap.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="start this many clients per second in all (default 0: all at once, as after a cloud restart)",
    )
    ap.add_argument(
        "--share-connections",
        action="store_true",
        help="let gRPC share one connection per node among a generator's clients (its default)",
    )
    ap.add_argument("--cloud-db", default=None, help="cloud database URL (default: a new PostgreSQL one)")
    ap.add_argument("--pg-server", default=os.environ.get("WINSTAR_TEST_PG", DEFAULT_PG))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, edge databases)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile the fan-out: yappi in the nodes and the generators, cProfile of the first update's transaction",
    )
    args = ap.parse_args(argv)
    if args.generate:
        generate(args.generate)
        return
    if args.profile:
        try:
            import yappi  # noqa: F401 - the nodes import it
        except ImportError:
            ap.error("--profile needs yappi in this environment: pip install yappi")
    exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="winstar-fanout-"))
    try:
        with cloud_database(args, tmp) as cloud_url:
            run_fanout(args, cloud_url, tmp)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_fanout(args: argparse.Namespace, cloud_url: str, tmp: Path) -> None:
    n_edges = args.edges
    print(machine_line())
    print(code_line())
    print(
        f"cloud: 2 `winstar run` nodes on {sa.engine.make_url(cloud_url).get_backend_name()}; edges: {n_edges:,}"
        f" SQLite databases held by {args.generators} load-generator process(es) of real EdgeClients"
        f" (outbox poll {args.client_poll:g}s, link heartbeat {args.client_heartbeat:g}s), started {f'{args.ramp:g} a second' if args.ramp else 'all at once'}"
    )
    print_raw_limits(cloud_url, tmp)
    platform = make_plugin_manager()
    cloud = Node(cloud_url, platform=platform)
    cloud.init_cloud("ce")
    profile = tmp / "profiles" if args.profile else None
    if profile:
        profile.mkdir()
    nodes = CloudNodes(cloud_url, 2, tmp, profile)
    gens: list[Generator] = []
    try:
        _fanout(args, cloud, platform, nodes, gens, tmp, n_edges)
    finally:
        for g in gens:
            g.stop()
        nodes.stop()
        cloud.close()


def _fanout(
    args: argparse.Namespace,
    cloud: Node,
    platform: Platform,
    nodes: CloudNodes,
    gens: list[Generator],
    tmp: Path,
    n_edges: int,
) -> None:
    # 1. the tenant, its edges (one transaction), one dashboard assigned to all of them
    progress(f"creating {n_edges} edges")
    t0 = time.perf_counter()
    with cloud.cloud() as c:
        tenant = c.create_tenant("Fanout")
        c.create_user("admin@fanout.io", tenant, "TENANT_ADMIN")
        creds = []
        for i in range(n_edges):
            row, secret = c.create_edge(f"edge-{i:04}", tenant)
            creds.append((row.name, row.routing_key, secret))
    edges_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with cloud.cloud() as c:
        tenant = c.find_tenant("Fanout")
        dash = c.create_entity("dashboard", "fleet overview", tenant, {"title": "v0"})
        for edge in c.list_edges():
            c.assign(edge, dash)
        dash_id = dash.id
    assign_s = time.perf_counter() - t0
    print(
        f"setup: {n_edges:,} edges created in one transaction in {edges_s:.1f}s ({1000 * edges_s / n_edges:.0f} ms"
        f" each: scrypt of its secret); the dashboard assigned to all directly in {assign_s:.1f}s"
    )
    progress("creating the edge databases")
    t0 = time.perf_counter()
    dbs, direct_s, copy_s = make_edge_dbs(platform, tmp, creds, lambda i: rotate(nodes.addrs, i))
    distinct = len(instance_ids(dbs))
    print(
        f"edge databases: {n_edges:,} in {time.perf_counter() - t0:.1f}s; init_edge on a new file"
        f" {1000 * direct_s:.0f} ms each (first 10), a copy of a migrated template + init_edge"
        f" {1000 * copy_s:.0f} ms each; {distinct:,} distinct instance ids"
    )
    assert distinct == n_edges, "copies of the template share an instance id"

    # 2. the nodes, idle without sessions
    nodes.start()
    wait_for(lambda: len(node_ids(cloud)) == 2, timeout=60, interval=0.1, what="two nodes registered")
    time.sleep(3)
    node_pids = {n: [nodes.pid(n)] for n in nodes.names}
    w = CpuWindow(node_pids).start()
    time.sleep(5)
    w.stop()
    rss0 = {n: rss_kb(nodes.pid(n)) for n in nodes.names}
    print(
        "nodes without sessions: "
        + ", ".join(f"{n} {w.pct(n):.1f} % CPU, {rss0[n] / 1024:.0f} MB RSS" for n in nodes.names)
    )

    # 3. the generators connect every edge
    progress(f"starting {args.generators} generators")
    t0 = time.perf_counter()
    for i, share in enumerate(split(dbs, args.generators)):
        ramp = args.ramp / args.generators
        gens.append(
            Generator(
                i,
                share,
                tmp,
                args.client_poll,
                args.share_connections,
                ramp,
                args.client_heartbeat,
                profile=str(tmp / "profiles" / f"gen{i}") if args.profile else None,
            )
        )
    wait_for(lambda: all("ready" in g.reports for g in gens), timeout=300, interval=0.1, what="generators")
    ready_s = time.perf_counter() - t0
    conn_window = CpuWindow(
        {**node_pids, "generators": [g.pid for g in gens], "postgres": postgres_pids}
    ).start()
    mid: dict[str, int] = {}

    def halfway() -> None:  # RSS and sessions of each node and generator, halfway through
        per = edges_per_node(cloud)
        for n in nodes.names:
            mid[n], mid[f"{n} sessions"] = rss_kb(nodes.pid(n)), per.get(ids[n], 0)
        for g in gens:
            mid[f"gen{g.index}"], mid[f"gen{g.index} clients"] = rss_kb(g.pid), g.connected()

    ids = node_ids(cloud)
    rows_s, clients_s = wait_connected(cloud, n_edges, gens, args.connect_timeout, "connecting", halfway)
    conn_window.stop()
    per_node = edges_per_node(cloud)
    held = {n: per_node.get(ids[n], 0) for n in nodes.names}
    print(
        f"connect: generators opened their {n_edges:,} edge databases and clients in {ready_s:.1f}s; every edge"
        f" served {rows_s:.1f}s later (edge rows), every client connected after {clients_s:.1f}s;"
        f" {', '.join(f'{n} serves {held[n]}' for n in nodes.names)};"
        f" CPU meanwhile: {', '.join(f'{n} {conn_window.used[n]:.1f}s' for n in nodes.names)},"
        f" generators {conn_window.used['generators']:.1f}s, PostgreSQL {conn_window.used['postgres']:.1f}s"
    )
    wait_for(
        lambda: count_where(cloud, EdgeEvent, EdgeEvent.status == "PENDING") == 0,
        timeout=300,
        interval=0.5,
        what="the dashboard's ADDED delivered",
    )
    downs: Counter[str] = Counter()

    # 4. idle
    time.sleep(5)
    progress(f"idle for {args.idle_seconds:g}s")
    gen_pids = [g.pid for g in gens]
    pg = postgres_pids
    x0 = pg_transactions(cloud)
    w = CpuWindow({**node_pids, "generators": gen_pids, "postgres": pg}).start()
    time.sleep(args.idle_seconds)
    w.stop()
    x1 = pg_transactions(cloud)
    rss1 = {n: rss_kb(nodes.pid(n)) for n in nodes.names}
    profiled_pids = {n: nodes.pid(n) for n in nodes.names} | {f"gen{g.index}": g.p.pid for g in gens}
    if nodes.profile:  # what the nodes do while idle: which functions, how many calls
        start_profiles(profiled_pids)
        time.sleep(args.idle_seconds)
        collect_profiles(profiled_pids, nodes.profile, 1, f"idle {args.idle_seconds:g}s")
    nodes_pct = sum(w.pct(n) for n in nodes.names)
    cores = os.cpu_count() or 1
    print(
        f"idle, {n_edges:,} sessions ({args.idle_seconds:g}s): "
        + ", ".join(f"{n} {w.pct(n):.1f} %" for n in nodes.names)
        + f" of one core (both nodes: {nodes_pct / cores:.1f} % of the machine's {cores} cores);"
        f" PostgreSQL {w.pct('postgres'):.1f} %; generators {w.pct('generators'):.1f} %;"
        f" machine busy {100 * w.machine:.1f} %; {x1 - x0} transactions in the cloud database"
        f" ({(x1 - x0) / w.seconds:.1f}/s, this measurement's own included)"
    )
    print(
        "memory per idle session, node RSS without sessions -> halfway -> all connected: "
        + ", ".join(
            f"{n} {rss0[n] / 1024:.0f} -> {mid[n] / 1024:.0f} ({mid[f'{n} sessions']} sessions)"
            f" -> {rss1[n] / 1024:.0f} MB ({held[n]}) = {(rss1[n] - rss0[n]) / max(held[n], 1):.0f} KB per session"
            f" on average, {(rss1[n] - mid[n]) / max(held[n] - mid[f'{n} sessions'], 1):.0f} KB per session"
            " of the second half"
            for n in nodes.names
        )
    )
    gen_lines = []
    for g in gens:
        state = g.reports.get("state", {})
        base, ready, now = g.reports["base"]["rss_kb"], g.reports["ready"]["rss_kb"], rss_kb(g.pid)
        half, half_n = mid[f"gen{g.index}"], mid[f"gen{g.index} clients"]
        gen_lines.append(
            f"gen{g.index} {base / 1024:.0f} -> {ready / 1024:.0f} (databases and clients made)"
            f" -> {half / 1024:.0f} ({half_n} connected) -> {now / 1024:.0f} MB"
            f" ({state.get('connected', 0)} connected) = {(now - base) / max(len(g.dbs), 1):.0f} KB per client"
            f" on average, {(now - half) / max(len(g.dbs) - half_n, 1):.0f} KB per client of the second half"
        )
    print("memory per client (generator RSS): " + "; ".join(gen_lines))

    # 5. fan-out: one update of the dashboard, from its commit to the ack of every edge
    commit_profile = cProfile.Profile()
    if nodes.profile:
        start_profiles(profiled_pids)
    for u in range(1, args.updates + 1):
        progress(f"update {u}")
        time.sleep(2)
        w = CpuWindow({**node_pids, "generators": gen_pids, "postgres": pg}).start()
        before = now_ms()
        with contextlib.ExitStack() as stack:
            if nodes.profile and u == 1:
                stack.enter_context(commit_profile)
            with cloud.cloud() as c:
                c.update_entity(c.entities.find_entity("dashboard", str(dash_id)), data={"title": f"v{u}"})
        committed = now_ms()
        where = (
            EdgeEvent.entity_id == dash_id,
            EdgeEvent.action == "UPDATED",
            EdgeEvent.created_time >= before,
        )

        def delivered(where: tuple[Any, ...] = where) -> bool:
            return count_where(cloud, EdgeEvent, *where, EdgeEvent.status == "DELIVERED") >= n_edges

        wait_for(delivered, timeout=300, interval=0.01, what=f"update {u} delivered")
        seen = now_ms()
        w.stop()
        with cloud.db.read() as conn:
            times = [t for (t,) in conn.execute(sa.select(EdgeEvent.delivered_time).where(*where)) if t]
        lat = [t - committed for t in times]
        print(
            f"fan-out {u}: one update to {len(times):,} edges acknowledged by all {max(lat):,} ms after its commit"
            f" (commit took {committed - before} ms; per edge {summary_ms(lat)}; the poll saw it at"
            f" {seen - committed:,} ms); CPU meanwhile: "
            + ", ".join(f"{n} {w.used[n]:.2f}s" for n in nodes.names)
            + f", generators {w.used['generators']:.2f}s, PostgreSQL {w.used['postgres']:.2f}s"
        )
    if nodes.profile:
        commit_profile.dump_stats(nodes.profile / "commit.pstat")
        for line in profile_summary(nodes.profile / "commit.pstat"):
            print(f"profile of the first update's transaction (this process, cProfile): {line}")
        collect_profiles(profiled_pids, nodes.profile, 2, f"{args.updates} fan-outs")
        if args.keep:
            print(f"profiles (pstat files): {nodes.profile}")
    progress("checking every edge database")
    version = 1 + args.updates
    stale = [
        d.name
        for d in dbs
        if edge_scalar(d, "SELECT version FROM entity WHERE id = ?", dash_id.hex) != version
    ]
    print(
        f"check: {n_edges - len(stale):,} of {n_edges:,} edge databases hold version {version} of the dashboard"
        + (f"; stale: {', '.join(stale[:10])}" if stale else "")
    )

    # 6. the generators at the client's default poll
    if args.default_poll_seconds > 0:
        for g in gens:
            g.command("poll 0.05")
        time.sleep(3)
        w = CpuWindow({**node_pids, "generators": gen_pids}).start()
        time.sleep(args.default_poll_seconds)
        w.stop()
        print(
            f"generators with the client's default 50 ms outbox poll ({args.default_poll_seconds:g}s):"
            f" {w.pct('generators'):.0f} % of one core for {n_edges:,} clients"
            f" ({1000 * w.used['generators'] / w.seconds / n_edges:.2f} ms of CPU per client per second);"
            f" machine busy {100 * w.machine:.0f} %"
        )
        for g in gens:
            g.command(f"poll {args.client_poll}")

    # 7. stop, and what the logs say
    for g in gens:
        done = g.stop()
        downs.update(done.get("link_down", {}))
    gens.clear()
    took = nodes.stop()
    print(
        "stop: "
        + ", ".join(f"{n} stopped in {took[n]:.1f}s" for n in nodes.names)
        + (f"; links that went down while connecting: {dict(downs)}" if downs else "; no link went down")
    )
    for n in nodes.names:
        warns = [ln for ln in nodes.log_tail(n) if " WARNING " in ln or " ERROR " in ln]
        if warns:
            print(f"{n} log: {len(warns)} warning/error line(s), first: {warns[0][:300]}")


if __name__ == "__main__":
    main()
