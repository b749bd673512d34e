"""Edge instances: a copied edge database knows it is a copy, and the cloud serves one box per edge."""

from __future__ import annotations

import logging
import sqlite3
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from procs import cli, winstar

from winstar_core.node import INSTANCE_PLACE_ENV, Node, instance_place
from winstar_core.services.common import get_config
from winstar_core.services.instances import (
    Admission,
    admit_instance,
    reset_instance,
    uplink_mark_stream_for,
)
from winstar_core.store import migrate
from winstar_core.store.db import make_engine
from winstar_core.store.models import Edge, EdgeEvent, StreamFailure, StreamMark
from winstar_core.store.outbox import uplink_mark_stream


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch):
    """The place is the real one unless a test pins it."""
    monkeypatch.delenv(INSTANCE_PLACE_ENV, raising=False)


def _edge_db(path) -> Node:
    node = Node(f"sqlite:///{path}")
    node.init_edge("127.0.0.1:7070", "key", "secret")
    return node


def _config(node: Node, key: str):
    with node.db.begin() as s:
        return get_config(s, key)


def _copy_sqlite(src, dst) -> None:
    """Copy a live SQLite database with its WAL content (a plain copy of the main file may miss it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


# -- the edge: its id and its place -------------------------------------------------------------------


def test_the_place_is_stable_across_calls_and_nodes(tmp_path):
    url = f"sqlite:///{tmp_path / 'edge.db'}"
    assert instance_place(url) == instance_place(url)
    assert len(instance_place(url)) == 64
    assert instance_place(url) != instance_place(f"sqlite:///{tmp_path / 'other.db'}")
    first = _edge_db(tmp_path / "edge.db")
    minted = first.instance_id()
    assert str(uuid.UUID(minted)) == minted
    assert first.instance_id() == minted
    first.close()
    again = Node(url)
    assert again.instance_id() == minted
    assert _config(again, "instance_copied_from") is None
    again.close()


def test_a_relative_path_and_a_symlink_are_the_same_place(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert instance_place("sqlite:///real/edge.db") == instance_place(
        f"sqlite:///{tmp_path / 'link/edge.db'}"
    )


def test_a_made_up_mac_does_not_change_the_place(tmp_path, monkeypatch):
    """Without a MAC, uuid.getnode() returns a random number with the multicast bit set."""
    url = f"sqlite:///{tmp_path / 'edge.db'}"
    randoms = iter([0x010000000001, 0x01ABCDEF0123, 0x03FFFFFFFFFF])
    monkeypatch.setattr(uuid, "getnode", lambda: next(randoms))
    assert instance_place(url) == instance_place(url) == instance_place(url)
    monkeypatch.setattr(uuid, "getnode", lambda: 0x0242AC110002)
    real = instance_place(url)
    monkeypatch.setattr(uuid, "getnode", lambda: 0x0242AC110003)
    assert instance_place(url) != real  # a real MAC counts: another box


def test_a_postgresql_place_leaves_the_password_out():
    a = instance_place("postgresql+psycopg://edge:one@db.local:5432/edge")
    assert a == instance_place("postgresql+psycopg://edge:two@db.local:5432/edge")
    assert a != instance_place("postgresql+psycopg://edge:one@db.local:5432/edge2")


def test_a_copied_database_becomes_a_new_instance(tmp_path, caplog):
    original = _edge_db(tmp_path / "a" / "edge.db")
    first = original.instance_id()
    _copy_sqlite(tmp_path / "a" / "edge.db", tmp_path / "b" / "edge.db")
    copy = Node(f"sqlite:///{tmp_path / 'b' / 'edge.db'}")
    with caplog.at_level(logging.WARNING, logger="winstar_core.node"):
        second = copy.instance_id()
    assert second != first and str(uuid.UUID(second)) == second
    assert _config(copy, "instance_copied_from") == first
    assert _config(copy, "instance_place") == instance_place(copy.url)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "winstar_core.node"]
    assert f"it was instance {first}" in warning and f"now instance {second}" in warning
    assert "winstar edge reset-instance" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="winstar_core.node"):
        assert copy.instance_id() == second  # the copy is now at home where it is
        assert original.instance_id() == first  # and the original is untouched
    assert not caplog.records
    original.close()
    copy.close()


def test_init_again_keeps_the_instance(db_url, tmp_path):
    """On both databases (an edge may keep its database in PostgreSQL)."""
    node = Node(db_url)
    node.init_edge("127.0.0.1:7070", "key", "secret", secret_file=str(tmp_path / "edge.secret"))
    first = _config(node, "instance_id")
    assert first is not None and _config(node, "instance_place") == instance_place(node.url)
    assert (
        node.init_edge("127.0.0.1:7071", "key", "secret", secret_file=str(tmp_path / "edge.secret")) is False
    )
    assert node.instance_id() == first == _config(node, "instance_id")
    node.close()


def test_a_database_made_before_instances_gets_one(tmp_path):
    node = _edge_db(tmp_path / "edge.db")
    with node.db.begin() as s:
        s.execute(sa.text("DELETE FROM node_config WHERE key IN ('instance_id', 'instance_place')"))
    minted = node.instance_id()
    assert _config(node, "instance_id") == minted and _config(node, "instance_copied_from") is None
    node.close()


def test_a_pinned_place(tmp_path, monkeypatch):
    monkeypatch.setenv(INSTANCE_PLACE_ENV, "plant-7-box")
    pinned = instance_place(f"sqlite:///{tmp_path / 'edge.db'}")
    assert pinned == instance_place("sqlite:////somewhere/else.db")  # the path no longer counts
    original = _edge_db(tmp_path / "a" / "edge.db")
    first = original.instance_id()
    _copy_sqlite(tmp_path / "a" / "edge.db", tmp_path / "b" / "edge.db")
    moved = Node(f"sqlite:///{tmp_path / 'b' / 'edge.db'}")
    assert moved.instance_id() == first  # the operator said: same place
    monkeypatch.setenv(INSTANCE_PLACE_ENV, "plant-8-box")
    assert moved.instance_id() != first
    assert _config(moved, "instance_copied_from") == first
    original.close()
    moved.close()


def test_a_cloud_has_no_instance_id(cloud_node):
    with pytest.raises(Exception, match="is for an edge node"):
        cloud_node.instance_id()


# -- the cloud: which box it serves -------------------------------------------------------------------

BOX_A, BOX_B, BOX_C = (str(uuid.uuid4()) for _ in range(3))


@pytest.fixture
def edge_id(cloud_node) -> uuid.UUID:
    with cloud_node.cloud() as c:
        tenant = c.create_tenant("Acme")
        edge, _secret = c.create_edge("Plant 7", tenant)
    return edge.id


def _admit(node: Node, edge_id: uuid.UUID, instance_id: str, peer: str = "ipv4:10.0.0.1:5000") -> Admission:
    with node.db.begin() as s:
        edge = s.get(Edge, edge_id)
        assert edge is not None
        return admit_instance(s, edge, instance_id, peer)


def _reset(node: Node, edge_id: uuid.UUID) -> None:
    with node.db.begin() as s:
        edge = s.get(Edge, edge_id)
        assert edge is not None
        reset_instance(s, edge)


def _edge(node: Node, edge_id: uuid.UUID) -> Edge:
    with node.db.begin() as s:
        edge = s.get(Edge, edge_id)
        assert edge is not None
        return edge


def test_the_first_box_is_adopted_and_served_again(cloud_node, edge_id):
    assert _edge(cloud_node, edge_id).instance_id is None
    assert _admit(cloud_node, edge_id, BOX_A) == Admission(ok=True, adopted=True, full_sync=False)
    edge = _edge(cloud_node, edge_id)
    assert (edge.instance_id, edge.instance_reset, edge.conflict) == (BOX_A, False, None)
    since = edge.instance_since
    assert since is not None
    assert _admit(cloud_node, edge_id, BOX_A) == Admission(ok=True)
    assert _admit(cloud_node, edge_id, BOX_A.upper()) == Admission(ok=True)  # the same UUID
    assert _edge(cloud_node, edge_id).instance_since == since


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", "🦀"])
def test_a_hello_without_a_valid_instance_is_refused(cloud_node, edge_id, bad):
    answer = _admit(cloud_node, edge_id, bad)
    assert answer == Admission(ok=False, reason="the Hello names no valid instance id")
    assert _edge(cloud_node, edge_id).instance_id is None  # and nothing adopted


def test_a_second_box_is_refused_and_recorded(cloud_node, edge_id):
    _admit(cloud_node, edge_id, BOX_A)
    answer = _admit(cloud_node, edge_id, BOX_B, peer="ipv4:10.0.0.2:6000")
    assert not answer.ok and not answer.adopted and not answer.full_sync
    assert answer.reason == (
        f"another box (instance {BOX_A}) is using this edge's credentials; this box is instance "
        f"{BOX_B}. If this box should be the edge, run `winstar edge reset-instance 'Plant 7'` in the cloud"
    )
    edge = _edge(cloud_node, edge_id)
    assert edge.instance_id == BOX_A and not edge.instance_reset
    assert edge.conflict is not None
    assert edge.conflict.startswith(f"box {BOX_B} refused at 20")
    assert edge.conflict.endswith(f"Z from ipv4:10.0.0.2:6000: another box ({BOX_A}) is the edge")
    assert _admit(cloud_node, edge_id, BOX_A).ok  # the served box goes on
    assert _edge(cloud_node, edge_id).conflict == edge.conflict  # the line stays for the operator


def test_a_reset_moves_the_edge_to_the_next_new_box(cloud_node, edge_id):
    _reset(cloud_node, edge_id)  # no box served yet: nothing to move
    assert not _edge(cloud_node, edge_id).instance_reset
    _admit(cloud_node, edge_id, BOX_A)
    _admit(cloud_node, edge_id, BOX_B)
    _reset(cloud_node, edge_id)
    _reset(cloud_node, edge_id)  # idempotent
    assert _edge(cloud_node, edge_id).instance_reset
    old = _admit(cloud_node, edge_id, BOX_A, peer="ipv4:10.0.0.1:5001")
    assert not old.ok and old.reason == (
        f"this box (instance {BOX_A}) was replaced: an operator ran `winstar edge reset-instance`; "
        "the cloud waits for the new box"
    )
    assert _edge(cloud_node, edge_id).conflict.startswith(f"box {BOX_A} refused at ")  # type: ignore[union-attr]
    moved = _admit(cloud_node, edge_id, BOX_B)
    assert moved == Admission(ok=True, adopted=True, full_sync=True)
    edge = _edge(cloud_node, edge_id)
    assert (edge.instance_id, edge.instance_reset) == (BOX_B, False)
    assert edge.conflict is not None and edge.conflict.startswith(
        f"moved from box {BOX_A} to box {BOX_B} at 20"
    )
    assert _admit(cloud_node, edge_id, BOX_B) == Admission(ok=True)
    assert "another box" in _admit(cloud_node, edge_id, BOX_A).reason  # the old box, from then on
    assert not _admit(cloud_node, edge_id, BOX_C).ok  # and any other one


def test_each_instance_has_its_own_uplink_mark(edge_id):
    a, b = uplink_mark_stream_for(edge_id, BOX_A), uplink_mark_stream_for(edge_id, BOX_B)
    assert a != b and a.startswith(f"uplink:{edge_id}:") and len(a) <= 64
    assert a == uplink_mark_stream_for(str(edge_id), BOX_A.upper())
    assert a != uplink_mark_stream(edge_id)


def test_the_first_box_after_the_upgrade_keeps_the_old_mark(cloud_node, edge_id):
    """A cloud upgraded from one mark per edge: the box it served keeps its mark and verdicts."""
    with cloud_node.db.begin() as s:
        s.add(StreamMark(stream=uplink_mark_stream(edge_id), applied_seq=42))
        s.add(StreamFailure(stream=uplink_mark_stream(edge_id), seq=7, error="bad data", created_time=1))
    _admit(cloud_node, edge_id, BOX_A)
    new = uplink_mark_stream_for(edge_id, BOX_A)
    with cloud_node.db.begin() as s:
        marks = dict(s.execute(sa.select(StreamMark.stream, StreamMark.applied_seq)).all())
        failures = s.execute(sa.select(StreamFailure.stream, StreamFailure.seq, StreamFailure.error)).all()
    assert marks == {new: 42}
    assert [tuple(f) for f in failures] == [(new, 7, "bad data")]
    _admit(cloud_node, edge_id, BOX_B)
    _reset(cloud_node, edge_id)
    _admit(cloud_node, edge_id, BOX_B)  # a moved edge starts its new box's stream afresh
    with cloud_node.db.begin() as s:
        assert s.get(StreamMark, uplink_mark_stream_for(edge_id, BOX_B)) is None
        assert s.get(StreamMark, new).applied_seq == 42  # type: ignore[union-attr]


def test_the_migration_keeps_existing_edges(db_url):
    """Edges made before 0002 get no instance and no reset; 0002 also goes back down."""
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0001")
    tenant, edge = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO tenant (id, name, created_time) VALUES (:id, 'Acme', 1)"),
            {"id": tenant.hex if engine.dialect.name == "sqlite" else str(tenant)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO edge (id, tenant_id, name, routing_key, secret_salt, secret_hash, connected,"
                " sync_requested, created_time) VALUES (:id, :t, 'e1', 'rk', :b, :b, :f, :f, 1)"
            ),
            {
                "id": edge.hex if engine.dialect.name == "sqlite" else str(edge),
                "t": tenant.hex if engine.dialect.name == "sqlite" else str(tenant),
                "b": b"x",
                "f": False,
            },
        )
    migrate.upgrade(engine)
    with engine.begin() as conn:
        row = conn.execute(sa.select(Edge.instance_id, Edge.instance_reset, Edge.conflict)).one()
    assert tuple(row) == (None, False, None)
    engine.dispose()


# -- the command line -------------------------------------------------------------------------------


@pytest.fixture
def cloud_db(tmp_path) -> str:
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    cli(db, "init", "cloud", "--json")
    cli(db, "tenant", "create", "Acme", "--json")
    return db


def test_edge_show_and_reset_instance(cloud_db):
    edge = cli(cloud_db, "edge", "create", "Plant 7", "--json")
    shown = cli(cloud_db, "edge", "show", "Plant 7", "--json")
    assert shown == {
        "id": edge["id"],
        "name": "Plant 7",
        "tenant_id": edge["tenant_id"],
        "customer_id": None,
        "connected": False,
        "node": None,
        "instance": None,
        "conflict": None,
        "last_seen": None,
        "pending": 0,
        "failed": 0,
        "held": 0,
        "sync": {
            "state": "none",
            "requested": False,
            "finished": None,
            "added": None,
            "updated": None,
            "removed": None,
            "unchanged": None,
            "failed": None,
            "held": None,
            "bytes": None,
        },
    }
    cli(cloud_db, "entity", "create", "dashboard", "D1", "--data", '{"title": "1"}', "--json")
    cli(cloud_db, "entity", "create", "dashboard", "D2", "--data", '{"title": "2"}', "--json")
    cli(cloud_db, "edge", "assign", "Plant 7", "dashboard", "D1", "--json")
    cli(cloud_db, "edge", "assign", "Plant 7", "dashboard", "D2", "--json")
    cli(cloud_db, "edge", "sync", edge["id"], "--json")
    node = Node(cloud_db)
    edge_id = uuid.UUID(edge["id"])
    with node.db.begin() as s:
        s.execute(
            sa.update(EdgeEvent)
            .where(EdgeEvent.edge_id == edge_id, EdgeEvent.seq == 1)
            .values(status="FAILED")
        )
    _admit(node, edge_id, BOX_A)
    _admit(node, edge_id, BOX_B)
    shown = cli(cloud_db, "edge", "show", edge["id"], "--tenant", "Acme", "--json")
    assert (shown["instance"], shown["pending"], shown["failed"]) == (BOX_A, 1, 1)
    assert shown["conflict"].startswith(f"box {BOX_B} refused at ")
    assert (shown["sync"]["state"], shown["sync"]["requested"]) == ("pending", True)
    with node.cloud() as c:  # the serving node runs it: its events, then its end
        assert c.run_sync(c.find_edge("Plant 7")) == 3  # 2 dashboards (no user yet), its end
    sync = cli(cloud_db, "edge", "show", "Plant 7", "--json")["sync"]
    assert (sync["state"], sync["requested"], sync["finished"]) == ("running", False, None)
    with node.db.begin() as s:  # the edge acknowledged the whole sync
        s.execute(
            sa.update(EdgeEvent)
            .where(EdgeEvent.edge_id == edge_id, EdgeEvent.status == "PENDING")
            .values(status="DELIVERED", delivered_time=1_700_000_000_000)
        )
    sync = cli(cloud_db, "edge", "show", "Plant 7", "--json")["sync"]
    assert (sync["state"], sync["finished"], sync["failed"], sync["held"]) == (
        "done",
        "2023-11-14T22:13:20.000Z",
        0,
        0,
    )
    with node.db.begin() as s:  # one event of the sync had failed: the edge has not converged
        last = s.scalar(sa.select(sa.func.max(EdgeEvent.seq)).where(EdgeEvent.edge_id == edge_id))
        s.execute(
            sa.update(EdgeEvent)
            .where(EdgeEvent.edge_id == edge_id, EdgeEvent.seq == last - 1)
            .values(status="FAILED", error="refused")
        )
    sync = cli(cloud_db, "edge", "show", "Plant 7", "--json")["sync"]
    assert (sync["state"], sync["failed"]) == ("failed", 1)

    assert cli(cloud_db, "edge", "reset-instance", "Plant 7", "--json") == {
        "edge_id": edge["id"],
        "reset": True,
    }
    assert cli(cloud_db, "edge", "reset-instance", edge["id"], "--tenant", "Acme", "--json")["reset"]
    assert _edge(node, edge_id).instance_reset
    assert _admit(node, edge_id, BOX_B).full_sync
    assert cli(cloud_db, "edge", "show", "Plant 7", "--json")["instance"] == BOX_B
    readable = cli(cloud_db, "edge", "show", "Plant 7").stdout
    assert "instance" in readable and BOX_B in readable
    node.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (("edge", "show", "nope"), "no edge 'nope'"),
        (("edge", "reset-instance", "nope"), "no edge 'nope'"),
        (("edge", "reset-instance", "e1", "--tenant", "Other"), "no tenant 'Other'"),
        (("edge", "show", "e1", "--tenant", "Other", "--json"), "no tenant 'Other'"),
    ],
)
def test_bad_input_is_one_line(cloud_db, args, message):
    cli(cloud_db, "edge", "create", "e1", "--json")
    out = winstar(cloud_db, *args, check=False)
    err = out.stderr.strip()
    assert out.returncode == 1 and out.stdout == ""
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_an_edge_database_is_refused_by_the_cloud_commands(tmp_path):
    db = f"sqlite:///{tmp_path / 'edge.db'}"
    cli(db, "init", "edge", "--cloud", "127.0.0.1:7070", "--routing-key", "k", "--secret", "s", "--json")
    out = winstar(db, "edge", "reset-instance", "e1", check=False)
    assert out.returncode == 1 and "for a cloud node" in out.stderr


def test_edge_status_shows_the_instance(tmp_path):
    db = f"sqlite:///{tmp_path / 'edge.db'}"
    init = ("init", "edge", "--cloud", "127.0.0.1:7070", "--routing-key", "k", "--secret", "s", "--json")
    winstar(db, *init)  # each init in a process of its own: the place must not depend on the process
    first = cli(db, "status", "--json")["instance"]
    assert str(uuid.UUID(first)) == first
    winstar(db, *init)  # init again: the same instance
    assert cli(db, "status", "--json")["instance"] == first
    node = Node(db)
    with node.db.begin() as s:
        s.execute(sa.text("DELETE FROM node_config WHERE key = 'instance_id'"))
    node.close()
    assert cli(db, "status", "--json")["instance"] is None  # status reads, it does not mint
