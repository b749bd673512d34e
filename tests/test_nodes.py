"""Several cloud nodes on one PostgreSQL database, with real processes: which node serves an edge,
changes written anywhere, a node killed in the middle of a two-way drain, one edge connecting to
two nodes at once, a restarted node that leaves the others' edges alone."""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from procs import Proc, cli, free_port, stop_all, wait_until, winstar

from winstar_core.node import Node
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity

N = 1500
SLOW = ("--batch-size", "20", "--max-in-flight", "1")


@dataclass
class Fleet:
    cloud: Node
    tmp: Path
    ports: dict[str, int]
    nodes: dict[str, Proc] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def start_node(self, name: str, *extra: str) -> Proc:
        return self.start_nodes(name, extra=extra)[name]

    def start_nodes(self, *names: str, extra: tuple[str, ...] = ()) -> dict[str, Proc]:
        """Start the nodes ``names`` at once (each process takes seconds to start), then wait for
        every one of them to register."""
        for name in names:
            proc = Proc(
                self.cloud.url,
                self.tmp / f"node-{name}.log",
                "--listen",
                f"127.0.0.1:{self.ports[name]}",
                "--node-name",
                name,
                *extra,
            ).start()
            self.nodes[name] = proc
            self.procs.append(proc)
        wait_until(lambda: set(names) <= set(self.live_nodes()), 30, what=f"nodes {names} to register")
        return {name: self.nodes[name] for name in names}

    def live_nodes(self) -> dict[str, int]:
        return {n["name"]: n["edges"] for n in cli(self.cloud.url, "cloud", "nodes", "--json")}

    def edge(self, name: str, *node_names: str) -> Node:
        """A new edge `name` of tenant Acme whose database knows the nodes ``node_names``."""
        made = cli(self.cloud.url, "edge", "create", name, "--tenant", "Acme", "--json")
        node = Node(f"sqlite:///{self.tmp / (name + '.db')}")
        addrs = ",".join(f"127.0.0.1:{self.ports[n]}" for n in node_names)
        node.init_edge(addrs, made["routing_key"], made["secret"])
        return node

    def run_edge(self, edge: Node, log: str, *extra: str) -> Proc:
        proc = Proc(edge.url, self.tmp / log, *extra).start()
        self.procs.append(proc)
        return proc

    def serving(self, edge_name: str) -> str | None:
        rows = cli(self.cloud.url, "edge", "list", "--json")
        return next(r["node"] for r in rows if r["name"] == edge_name)


@pytest.fixture
def fleet(pg_url, tmp_path):
    cloud = Node(pg_url)
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
    f = Fleet(cloud, tmp_path, {n: free_port() for n in ("a", "b", "c")})
    yield f
    stop_all(f.procs)
    cloud.close()


def _names(node: Node, type_name: str) -> list[str]:
    with node.db.read() as conn:
        return sorted(conn.scalars(sa.select(Entity.name).where(Entity.type == type_name)))


def test_an_edge_served_by_one_node_gets_what_is_written_anywhere(fleet):
    fleet.start_nodes("a", "b")
    edge = fleet.edge("Plant 1", "a")
    fleet.run_edge(edge, "edge.log")
    wait_until(lambda: fleet.serving("Plant 1") == "a", 30, what="node a to serve the edge")
    assert fleet.live_nodes() == {"a": 1, "b": 0}
    status = cli(fleet.cloud.url, "status", "--json")
    assert [(e["name"], e["connected"], e["node"]) for e in status["edges"]] == [("Plant 1", True, "a")]
    # written by the command line (in the test's process: no node at all), then a Sync Edge asked
    # the same way: the serving node runs it
    cli(fleet.cloud.url, "entity", "create", "dashboard", "D", "--data", '{"title": "t"}', "--json")
    cli(fleet.cloud.url, "edge", "assign", "Plant 1", "dashboard", "D", "--json")
    wait_until(lambda: _names(edge, "dashboard") == ["D"], 15, what="the dashboard on the edge")
    cli(fleet.cloud.url, "edge", "sync", "Plant 1", "--json")
    wait_until(
        lambda: cli(fleet.cloud.url, "edge", "show", "Plant 1", "--json")["sync"]["state"] == "done",
        30,
        what="the sync, run by node a",
    )
    # node b stops cleanly: it leaves, and node a's edge is not touched
    fleet.nodes["b"].stop()
    wait_until(lambda: "b" not in fleet.live_nodes(), 10, what="node b to leave")
    assert fleet.serving("Plant 1") == "a"


def _drain_backlog(fleet: Fleet, edge: Node) -> None:
    def cloud_side() -> None:
        with fleet.cloud.cloud() as c:
            t, e = c.find_tenant("Acme"), c.find_edge("Plant 1")
            for i in range(N):
                c.assign(e, c.create_entity("asset", f"a{i:05}", t))
        with fleet.cloud.cloud() as c:
            for a in c.entities.list_entities("asset")[:300]:
                c.update_entity(a, data={"label": "v2"})

    # the two databases are written at once: the cloud's writes mostly wait on PostgreSQL
    with ThreadPoolExecutor(1) as pool:
        cloud_written = pool.submit(cloud_side)
        with edge.edge() as ed:
            for i in range(N):
                ed.create_entity("device", f"d{i:05}", None, user_email="admin@acme.io")
        cloud_written.result()


def _statuses(node: Node, model) -> set[str]:
    with node.db.read() as conn:
        return set(conn.scalars(sa.select(model.status).distinct()))


def test_a_node_killed_mid_drain_hands_its_edge_to_another_nothing_lost(fleet):
    fleet.start_nodes("a", "b", "c", extra=SLOW)
    edge = fleet.edge("Plant 1", "a", "b", "c")
    first = fleet.run_edge(edge, "edge.log", *SLOW)
    wait_until(lambda: fleet.serving("Plant 1") == "a", 30, what="node a to serve the edge")
    first.stop()  # offline while both sides queue thousands of changes
    _drain_backlog(fleet, edge)
    fleet.run_edge(edge, "edge2.log", *SLOW)
    wait_until(lambda: len(_names(edge, "asset")) > 100, 60, interval=0.01, what="the drain to start")
    fleet.nodes["a"].stop(signal.SIGKILL)
    at_kill = len(_names(edge, "asset"))
    assert at_kill < N, "the kill must land in the middle of the drain"
    wait_until(lambda: fleet.serving("Plant 1") in ("b", "c"), 30, what="another node to serve the edge")

    def drained() -> bool:
        with fleet.cloud.db.read() as conn:
            # done: delivered, or superseded by a later event of the same entity (compaction)
            down = conn.scalar(
                sa.select(sa.func.count())
                .select_from(EdgeEvent)
                .where(EdgeEvent.status.not_in(("DELIVERED", "SUPERSEDED")))
            )
        with edge.db.read() as conn:
            up = conn.scalar(
                sa.select(sa.func.count())
                .select_from(CloudEvent)
                .where(CloudEvent.status.not_in(("DELIVERED", "SUPERSEDED")))
            )
        return down == 0 and up == 0

    wait_until(drained, 180, what="both drains to finish")
    # every event exactly once, the updates after their creations
    assert _names(edge, "asset") == [f"a{i:05}" for i in range(N)]
    assert _names(fleet.cloud, "device") == [f"d{i:05}" for i in range(N)]
    with edge.db.read() as conn:
        versions = sorted(conn.scalars(sa.select(Entity.version).where(Entity.type == "asset")))
    assert versions == [1] * (N - 300) + [2] * 300
    # the killed node stops counting as live, and the fleet's picture says who serves
    wait_until(lambda: "a" not in fleet.live_nodes(), 30, what="the killed node to stop counting")
    live = fleet.live_nodes()
    assert sum(live.values()) == 1 and set(live) == {"b", "c"}


def test_one_edge_connecting_to_two_nodes_at_once_has_one_session(fleet):
    fleet.start_nodes("a", "b")
    edge = fleet.edge("Plant 1", "a")
    # the same edge database (one box) run twice, each process told another node
    fleet.run_edge(edge, "edge-a.log", "--cloud", f"127.0.0.1:{fleet.ports['a']}")
    fleet.run_edge(edge, "edge-b.log", "--cloud", f"127.0.0.1:{fleet.ports['b']}")
    wait_until(lambda: fleet.serving("Plant 1") is not None, 30, what="a node to serve the edge")
    with fleet.cloud.cloud() as c:
        t, e = c.find_tenant("Acme"), c.find_edge("Plant 1")
        for i in range(200):
            c.assign(e, c.create_entity("asset", f"a{i:03}", t))
    with edge.edge() as ed:
        for i in range(200):
            ed.create_entity("device", f"d{i:03}", None, user_email="admin@acme.io")

    # whichever session wins, the fleet never shows two: sampled all along, while the two
    # processes take the edge from each other again and again, until everything is delivered
    def takeovers() -> int:
        return sum(p.output().count("(the newest connection wins)") for p in fleet.nodes.values())

    before, samples = takeovers(), []

    def one_session_until_delivered() -> bool:
        live = fleet.live_nodes()
        assert sum(live.values()) <= 1, live
        samples.append(live)
        return (
            len(samples) >= 20
            and takeovers() >= before + 4
            and _statuses(fleet.cloud, EdgeEvent) == {"DELIVERED"}
            and _statuses(edge, CloudEvent) == {"DELIVERED"}
        )

    wait_until(one_session_until_delivered, 120, what="everything delivered, across four takeovers")
    assert _names(edge, "asset") == [f"a{i:03}" for i in range(200)]
    assert _names(fleet.cloud, "device") == [f"d{i:03}" for i in range(200)]


def test_a_restarted_node_leaves_the_other_nodes_edges_alone(fleet):
    fleet.start_nodes("a", "b")
    one, two = fleet.edge("Plant 1", "a"), fleet.edge("Plant 2", "b")
    fleet.run_edge(one, "one.log")
    two_proc = fleet.run_edge(two, "two.log")
    wait_until(lambda: fleet.live_nodes() == {"a": 1, "b": 1}, 30, what="both edges served")
    with fleet.cloud.db.read() as conn:
        session_before = conn.scalar(
            sa.select(sa.text("session_id")).select_from(sa.text("edge")).where(sa.text("name = 'Plant 2'"))
        )
    fleet.nodes["a"].stop()
    assert fleet.serving("Plant 2") == "b"
    fleet.start_node("a")
    wait_until(lambda: fleet.live_nodes() == {"a": 1, "b": 1}, 30, what="node a to serve its edge again")
    with fleet.cloud.db.read() as conn:
        session_after = conn.scalar(
            sa.select(sa.text("session_id")).select_from(sa.text("edge")).where(sa.text("name = 'Plant 2'"))
        )
    assert session_after == session_before  # node b's session went on, untouched
    assert two_proc.output().count("connected to") == 1
    assert isinstance(uuid.UUID(str(session_after)), uuid.UUID)


def test_a_node_name_is_one_live_node_and_a_valid_name(tmp_path):
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    cli(db, "init", "cloud", "--json")
    port = free_port()
    first = Proc(db, tmp_path / "x.log", "--listen", f"127.0.0.1:{port}", "--node-name", "x").start()
    try:
        wait_until(
            lambda: [n["name"] for n in cli(db, "cloud", "nodes", "--json")] == ["x"], 30, what="node x"
        )
        again = winstar(db, "run", "--listen", f"127.0.0.1:{free_port()}", "--node-name", "x", check=False)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines() == [
            line for line in again.stderr.strip().splitlines() if "a cloud node named 'x' is running" in line
        ]
        long = winstar(
            db, "run", "--listen", f"127.0.0.1:{free_port()}", "--node-name", "n" * 300, check=False
        )
        assert long.returncode == 1 and "at most 255 characters" in long.stderr
        # the same address again (the node was killed a moment ago): it takes its name back at once
        first.stop(signal.SIGKILL)
        first = Proc(db, tmp_path / "x2.log", "--listen", f"127.0.0.1:{port}", "--node-name", "x").start()
        wait_until(lambda: "cloud node 'x' serving" in first.output(), 30, what="node x again")
    finally:
        first.stop()
    assert cli(db, "cloud", "nodes", "--json") == []  # it left cleanly
