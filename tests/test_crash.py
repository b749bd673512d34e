"""kill -9 in the middle of a drain of thousands of events, then restart: every event is applied
exactly once and none stays pending. Cloud on PostgreSQL and SQLite, edge on SQLite."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from e2e_world import _running_world, _tenant
from procs import wait_until

from winstar_core.store.models import Entity, StreamMark

N = 3000
# small batches, one in flight: a drain of thousands takes hundreds of round trips, long enough to be
# cut in the middle however fast one round trip gets
SLOW = ("--batch-size", "20", "--max-in-flight", "1")


def _count(node, type_name):
    with node.db.read() as conn:
        return int(
            conn.scalar(sa.select(sa.func.count()).select_from(Entity).where(Entity.type == type_name))
        )


def test_cloud_killed_mid_drain_then_restarted(world):
    w = world
    w.start_cloud(*SLOW)
    w.start_edge(*SLOW)
    w.wait_connected()
    w.edge_proc.stop()  # offline while the backlog is written: the drain starts when it comes back

    def bulk(c):
        t, edge = _tenant(c), c.find_edge("Plant 7")
        for i in range(N):
            c.assign(edge, c.create_entity("asset", f"a{i:05}", t))

    w.cloud_do(bulk)
    w.cloud_do(
        lambda c: [c.update_entity(e, data={"label": "v2"}) for e in c.entities.list_entities("asset")[:500]]
    )
    w.start_edge(*SLOW)
    wait_until(lambda: _count(w.edge, "asset") > 200, interval=0.005, what="the drain to start")
    w.cloud_proc.kill()
    at_kill = _count(w.edge, "asset")
    assert 0 < at_kill < N, "the kill must land in the middle of the drain"
    w.start_cloud(*SLOW)
    wait_until(lambda: _settled(w), timeout=120, what="the drain to finish after the restart")
    _assert_converged(w)
    # the 500 updates, written before the edge connected, superseded their entities' ADDED
    assert _statuses(w) == {"DELIVERED", "SUPERSEDED"}
    with w.edge.db.read() as conn:  # every asset once, the updated ones at version 2
        versions = sorted(conn.scalars(sa.select(Entity.version).where(Entity.type == "asset")))
    assert versions == [1] * (N - 500) + [2] * 500


def test_edge_killed_mid_drain_then_restarted(world):
    w = world
    w.start_cloud(*SLOW)
    w.start_edge(*SLOW)
    w.wait_connected()
    w.edge_proc.stop()  # offline: the edge queues thousands of devices
    with w.edge.edge() as e:
        for i in range(N):
            e.create_entity("device", f"d{i:05}", None, user_email="admin@acme.io")
    w.start_edge(*SLOW)
    wait_until(lambda: _count(w.cloud, "device") > 200, interval=0.005, what="the uplink drain to start")
    w.edge_proc.kill()
    at_kill = _count(w.cloud, "device")
    assert 0 < at_kill < N, "the kill must land in the middle of the drain"
    # and the cloud goes down hard too while the edge is away
    w.cloud_proc.kill()
    w.start_cloud(*SLOW)
    w.start_edge(*SLOW)
    wait_until(lambda: w.edge_pending() == 0 and _settled(w), timeout=120, what="both drains")
    assert _count(w.cloud, "device") == N
    with w.cloud.cloud() as c:
        names = [d.name for d in c.entities.list_entities("device")]
        assert names == [f"d{i:05}" for i in range(N)]  # each once, none renamed by a replay
        assert {d.version for d in c.entities.list_entities("device")} == {1}
        assert len(c.effective_entities(c.find_edge("Plant 7"))) == N
    with w.cloud.db.read() as conn:  # the cloud's mark of the edge's stream reached its last event
        mark = conn.scalar(
            sa.select(StreamMark.applied_seq).where(StreamMark.stream.like(f"uplink:{w.edge_id}:%"))
        )
    assert mark == N
    _assert_converged(w)


def _settled(w) -> bool:
    """No downlink pending, and no Sync Edge under way: one the cloud queues when the edge comes
    back writes its end only after the edge answered its digest, when nothing may be pending for
    a moment."""
    if w.cloud_pending():
        return False
    state = w.cloud_do(lambda c: c.sync_outcome(c.find_edge("Plant 7"))["state"])
    return state not in ("pending", "running") and w.cloud_pending() == 0


def _assert_converged(w):
    with w.cloud.cloud() as c:
        expected = {e.id: (e.type, e.name, e.version) for e in c.effective_entities(c.find_edge("Plant 7"))}
    assert w.edge_entities() == expected
    statuses = _statuses(w)
    # nothing pending, nothing failed (superseded: replaced by a later event of its entity)
    assert statuses <= {"DELIVERED", "SUPERSEDED"}, statuses


def _statuses(w):
    with w.cloud.db.read() as conn:
        return set(conn.scalars(sa.text("SELECT DISTINCT status FROM edge_event")))


@pytest.fixture
def pg_world(pg_url, tmp_path, platform):
    yield from _running_world(pg_url, tmp_path, platform, "ce")


@pytest.mark.postgres
def test_the_cloud_database_drops_every_connection_mid_drain(pg_world):
    """As a PostgreSQL restart or failover looks to the cloud: every connection of its database
    (pool, LISTEN, the transaction in flight) killed, three times during a drain; meanwhile the
    edge keeps creating devices. Everything arrives once, nothing stays pending, nobody crashes."""
    w = pg_world
    w.start_cloud(*SLOW)
    w.start_edge(*SLOW)
    w.wait_connected()
    w.edge_proc.stop()

    def bulk(c):
        t, edge = _tenant(c), c.find_edge("Plant 7")
        for i in range(N):
            c.assign(edge, c.create_entity("asset", f"a{i:05}", t))

    w.cloud_do(bulk)
    w.start_edge(*SLOW)
    wait_until(lambda: _count(w.edge, "asset") > 200, interval=0.005, what="the drain to start")
    admin = sa.create_engine(w.cloud.url, isolation_level="AUTOCOMMIT")
    killed, at_fault = 0, None
    for i in range(3):
        with admin.connect() as conn:
            killed += int(
                conn.scalar(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            )
        at_fault = at_fault if at_fault is not None else _count(w.edge, "asset")
        with w.edge.edge() as e:
            e.create_entity("device", f"during-{i}", None, user_email="admin@acme.io")
        time.sleep(0.2)
    admin.dispose()
    assert killed >= 3  # the cloud had connections to lose each time
    assert at_fault < N, "the faults must land in the middle of the drain"
    wait_until(lambda: _settled(w) and w.edge_pending() == 0, timeout=120, what="both drains")
    assert w.cloud_proc.alive() and w.edge_proc.alive()
    assert _count(w.cloud, "device") == 3
    _assert_converged(w)
    with w.edge.db.read() as conn:
        assert sorted(conn.scalars(sa.select(Entity.name).where(Entity.type == "asset"))) == [
            f"a{i:05}" for i in range(N)
        ]
