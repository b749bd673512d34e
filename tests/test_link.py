"""The delivery engine in detail, with an in-process cloud and edge over real loopback gRPC."""

from __future__ import annotations

import json
import logging
import subprocess
import uuid

import pytest
import sqlalchemy as sa
from marshmallow import Schema, fields
from procs import wait_until

from winstar_core import EntityType, hookimpl
from winstar_core.entity_types import MAX_DATA_BYTES
from winstar_core.errors import WinstarError
from winstar_core.node import Node
from winstar_core.services import common
from winstar_core.services.common import ADDED, entity_state
from winstar_core.store.models import EdgeEvent, Entity, EntityMember
from winstar_core.store.outbox import OutboxEvent
from winstar_core.transport import link
from winstar_core.transport.client import downlink_receiver
from winstar_core.transport.link import DrainProgress, Receiver
from winstar_core.transport.pb import sync_pb2 as pb


def _edge_names(node):
    with node.db.read() as conn:
        return set(conn.scalars(sa.select(Entity.name)))


def _pending(node):
    # a connection per poll: on SQLite one read transaction is one snapshot, and a poll that
    # kept its connection would never see the acknowledgement land
    with node.db.read() as conn:
        return conn.scalar(
            sa.select(sa.func.count()).select_from(EdgeEvent).where(EdgeEvent.status == "PENDING")
        )


def test_linked_fixture_syncs_both_ways(linked):
    with linked.cloud.cloud() as c:
        c.assign(c.find_edge("edge"), c.create_entity("asset", "A", c.find_tenant("Acme")))
    wait_until(lambda: "A" in _edge_names(linked.edge))
    with linked.edge.edge() as e:
        dev = e.create_entity("device", "D", None, user_email="admin@acme.io")
    wait_until(lambda: _in_cloud(linked.cloud, dev.id))


def _in_cloud(node, entity_id):
    with node.db.read() as conn:
        return conn.scalar(sa.select(Entity.id).where(Entity.id == entity_id)) is not None


class _Counted(Schema):
    n = fields.Integer(load_default=0)


APPLIED: list[int] = []


class CountedType(EntityType):
    """Counts every time the receiver reads one of its payloads: an apply that ran twice shows."""

    name = "counted"
    schema = _Counted

    @classmethod
    def deserialize(cls, payload: bytes):
        data = super().deserialize(payload)
        APPLIED.append(data["n"])
        return data


class CountedPlugin:
    @hookimpl
    def winstar_register_entity_types(self, register):
        register.add(CountedType)


def test_a_batch_delivered_twice_takes_effect_once(make_platform, sqlite_url, tmp_path):
    platform = make_platform(CountedPlugin())
    edge = Node(sqlite_url, platform=platform)
    edge.init_edge("127.0.0.1:1", "k", "s")
    from winstar_core.services.edge import EdgeService

    receiver = Receiver(
        edge.db, "downlink", lambda s: EdgeService(s, platform), lambda svc, ev: svc.apply_downlink(ev)
    )
    tenant = uuid.uuid4()
    with edge.edge() as e:
        e.apply_config(
            pb.EdgeConfig(edge_id=str(uuid.uuid4()), name="e", tenant_id=str(tenant), edition="ce"), []
        )

    def event(seq, n, payload=None):
        state = pb.EntityState(
            id=str(uuid.UUID(int=seq)),
            type="counted",
            name=f"c{seq}",
            tenant_id=str(tenant),
            version=1,
            schema_version=1,
            payload=payload or f'{{"n": {n}}}'.encode(),
        )
        return pb.Event(
            seq=seq, type="counted", action=ADDED, entity_id=state.id, body=state.SerializeToString()
        )

    batch = [event(1, 1), event(2, 2, b'{"n": "not a number"}'), event(3, 3)]
    APPLIED.clear()
    first, _ = receiver.apply_batch(batch)
    assert [(r.seq, r.ok) for r in first.results] == [(1, True), (2, False), (3, True)]
    assert "invalid counted data" in first.results[1].error and first.applied_seq == 3
    count_after_first = len(APPLIED)
    again, _ = receiver.apply_batch(batch)  # the transport delivered it twice
    assert [(r.seq, r.ok, r.error) for r in again.results] == [(r.seq, r.ok, r.error) for r in first.results]
    assert len(APPLIED) == count_after_first  # nothing read, nothing applied the second time
    assert receiver.mark() == 3
    with edge.db.read() as conn:
        assert sorted(conn.scalars(sa.select(Entity.name))) == ["c1", "c3"]
    edge.close()


def test_edge_without_a_plugin_gets_the_event_held_then_delivered_once_installed(
    cloud_node, tmp_path, platform, make_platform, link_runner
):
    # the cloud knows `counted`; the edge does not (its plugin is not installed there)
    cloud = Node(cloud_node.url, platform=make_platform(CountedPlugin()))
    with cloud.cloud() as c:
        t = c.create_tenant("Acme")
        edge, secret = c.create_edge("e", t)
        c.assign(edge, c.create_entity("counted", "x", t))
        c.assign(edge, c.create_entity("asset", "after", t))
    server = link_runner.start_cloud(cloud, 0)
    edge_node = Node(f"sqlite:///{tmp_path / 'e.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    wait_until(lambda: "after" in _edge_names(edge_node))

    def statuses():
        with cloud.db.read() as conn:
            return dict(conn.execute(sa.select(EdgeEvent.type, EdgeEvent.status)).all())

    # held by the cloud (not sent for a certain failure), and nothing behind it waits
    wait_until(lambda: statuses() == {"counted": "HELD", "asset": "DELIVERED"})
    with cloud.db.read() as conn:
        err = conn.scalar(sa.select(EdgeEvent.error).where(EdgeEvent.type == "counted"))
    assert "the edge has no plugin for entity type 'counted'" in err
    with cloud.cloud() as c:
        assert c.retry_failed(c.find_edge("e")) == []  # nothing failed: nothing to retry
    link_runner.stop_edge(handle)
    edge_node.close()

    # the plugin is installed on the edge, which reconnects: the held event goes by itself
    upgraded = Node(f"sqlite:///{tmp_path / 'e.db'}", platform=make_platform(CountedPlugin()))
    handle = link_runner.start_edge(upgraded)
    wait_until(lambda: "x" in _edge_names(upgraded), what="the held event applied")

    def counted_rows():
        with cloud.db.read() as conn:
            return conn.execute(
                sa.select(EdgeEvent.seq, EdgeEvent.status).where(EdgeEvent.type == "counted")
            ).all()

    wait_until(lambda: [s for _, s in counted_rows()] == ["DELIVERED"], what="the released event acked")
    assert counted_rows()[0][0] == 3  # released with a new seq, past the edge's mark
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, 0.2)
    upgraded.close()
    cloud.close()


def test_users_created_later_reach_the_edge(linked):
    with linked.cloud.cloud() as c:
        c.create_user("late@acme.io", c.find_tenant("Acme"), "TENANT_ADMIN")

    def known():
        with linked.edge.db.read() as conn:
            return conn.scalar(sa.text("SELECT count(*) FROM app_user WHERE email = 'late@acme.io'")) == 1

    wait_until(known, what="the new user on the edge")
    with linked.edge.edge() as e:
        assert e.create_entity("device", "by-late", None, user_email="late@acme.io").name == "by-late"


def test_sync_edge_converges_a_drifted_edge(linked):
    with linked.cloud.cloud() as c:
        t = c.find_tenant("Acme")
        c.assign(c.find_edge("edge"), c.create_entity("asset", "kept", t))
    wait_until(lambda: "kept" in _edge_names(linked.edge))
    # the edge drifts: a stray entity appears, a real one disappears (a restored backup, say)
    with linked.edge.edge() as e:
        e.session.execute(sa.delete(Entity).where(Entity.name == "kept"))
        e.session.add(
            Entity(
                id=uuid.uuid4(),
                tenant_id=e.tenant_id,
                type="asset",
                name="stray",
                data={},
                version=1,
                created_time=0,
                updated_time=0,
            )
        )
    with linked.cloud.cloud() as c:
        c.request_sync(c.find_edge("edge"))
    wait_until(lambda: _edge_names(linked.edge) == {"kept"}, what="exact convergence after Sync Edge")


def test_a_long_sync_list_travels_in_parts(linked, monkeypatch):
    monkeypatch.setattr(common, "SYNC_IDS_PER_EVENT", 2)  # 5 entities: 3 parts
    with linked.cloud.cloud() as c:
        t, edge = c.find_tenant("Acme"), c.find_edge("edge")
        for i in range(5):
            c.assign(edge, c.create_entity("asset", f"k{i}", t))
    wanted = {f"k{i}" for i in range(5)}
    wait_until(lambda: _edge_names(linked.edge) == wanted)
    with linked.edge.edge() as e:  # drift: one lost, one stray
        e.session.execute(sa.delete(Entity).where(Entity.name == "k3"))
        e.session.add(
            Entity(id=uuid.uuid4(), tenant_id=e.tenant_id, type="asset", name="stray", data={}, version=1)
        )
    with linked.cloud.cloud() as c:
        c.request_sync(c.find_edge("edge"))
    wait_until(lambda: _edge_names(linked.edge) == wanted, what="exact convergence after a sync in parts")
    wait_until(lambda: _pending(linked.cloud) == 0)
    with linked.cloud.db.read() as conn:
        ends = conn.execute(
            sa.select(EdgeEvent.status, EdgeEvent.body)
            .where(EdgeEvent.type == "_sync", EdgeEvent.action == "SYNC")  # the digest's answer
            .order_by(EdgeEvent.seq)
        ).all()
    parts = [pb.SyncEnd.FromString(body) for _, body in ends]
    assert [status for status, _ in ends] == ["DELIVERED"] * 3
    assert [(p.part, p.parts, len(p.entity_ids)) for p in parts] == [(0, 3, 2), (1, 3, 2), (2, 3, 1)]
    with linked.edge.db.read() as conn:  # the parts kept on the way are gone
        assert conn.scalar(sa.text("SELECT count(*) FROM node_config WHERE key LIKE 'sync:%'")) == 0


def test_a_sync_with_a_part_missing_removes_nothing(linked):
    with linked.cloud.cloud() as c:
        c.assign(c.find_edge("edge"), c.create_entity("asset", "kept", c.find_tenant("Acme")))
    wait_until(lambda: "kept" in _edge_names(linked.edge))
    with linked.edge.edge() as e:
        kept = e.entities.find_entity("asset", "kept").id
        e.apply_sync_end(pb.SyncEnd(entity_ids=[], sync_id="s1", part=0, parts=3))
        with pytest.raises(WinstarError, match="part\\(s\\) 1 of 3 never applied here"):
            e.apply_sync_end(pb.SyncEnd(entity_ids=[str(kept)], sync_id="s1", part=2, parts=3))
    assert "kept" in _edge_names(linked.edge)


def _acme_edge(cloud_node, assets=("a1",)):
    """Tenant Acme with user admin@acme.io and edge "e", the ``assets`` assigned to it."""
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        edge, secret = c.create_edge("e", t)
        for name in assets:
            c.assign(edge, c.create_entity("asset", name, t))
    return edge, secret


def _box(tmp_path, name, platform, server, edge, secret):
    """An edge database (a box) for ``edge``, pointed at ``server``."""
    box = Node(f"sqlite:///{tmp_path / name}", platform=platform)
    box.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    return box


def _drain_once(link_runner, box, cloud_node, name):
    """Connect ``box`` until it holds ``name`` and the cloud has nothing pending, then stop it."""
    h = link_runner.start_edge(box)
    wait_until(lambda: name in _edge_names(box), what=f"{name} on the box")
    wait_until(lambda: _pending(cloud_node) == 0, what="every downlink acknowledged")
    link_runner.stop_edge(h)


def _copy_sqlite(src: Node, dest_path):
    """A consistent copy of an SQLite database (its WAL included), as a backup tool makes one."""
    import sqlite3

    source = sqlite3.connect(src.db.engine.url.database)
    target = sqlite3.connect(str(dest_path))
    source.backup(target)
    source.close()
    target.close()


def test_edge_restored_from_its_own_backup_is_resynced_automatically(
    cloud_node, tmp_path, platform, link_runner
):
    edge, secret = _acme_edge(cloud_node)
    server = link_runner.start_cloud(cloud_node, 0)
    box = _box(tmp_path, "box.db", platform, server, edge, secret)
    _drain_once(link_runner, box, cloud_node, "a1")
    _copy_sqlite(box, tmp_path / "backup.db")  # last night's backup
    with cloud_node.cloud() as c:
        c.assign(c.find_edge("e"), c.create_entity("asset", "a2", c.find_tenant("Acme")))
    _drain_once(link_runner, box, cloud_node, "a2")
    box.close()
    # the disk is restored from the backup, at the same place: the same box, older marks
    (tmp_path / "box.db").unlink()
    for extra in ("box.db-wal", "box.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    (tmp_path / "backup.db").rename(tmp_path / "box.db")
    restored = Node(f"sqlite:///{tmp_path / 'box.db'}", platform=platform)
    assert "a2" not in _edge_names(restored)
    h = link_runner.start_edge(restored)
    wait_until(lambda: "a2" in _edge_names(restored), what="a restored edge gets its state back")
    link_runner.stop_edge(h)
    link_runner.stop_cloud(server, 0.2)
    restored.close()


def test_a_cloud_restored_from_a_backup_does_not_reuse_seqs_the_edge_applied(
    cloud_node, tmp_path, platform, link_runner
):
    from winstar_core.store.models import StreamCounter
    from winstar_core.store.outbox import downlink_stream

    edge, secret = _acme_edge(cloud_node, ("a1", "a2", "a3"))
    server = link_runner.start_cloud(cloud_node, 0)
    box = _box(tmp_path, "box.db", platform, server, edge, secret)
    _drain_once(link_runner, box, cloud_node, "a3")
    # the cloud's database goes back to a backup taken before its downlinks to the edge were written
    with cloud_node.db.begin() as s:
        s.execute(sa.delete(EdgeEvent).where(EdgeEvent.edge_id == edge.id))
        s.execute(
            sa.update(StreamCounter)
            .where(StreamCounter.stream == downlink_stream(edge.id))
            .values(last_seq=0)
        )
    with cloud_node.cloud() as c:  # seq 1 again, which the edge has applied already (as a1)
        c.assign(c.find_edge("e"), c.create_entity("asset", "after-restore", c.find_tenant("Acme")))
    h = link_runner.start_edge(box)
    wait_until(
        lambda: "after-restore" in _edge_names(box),
        what="the new downlink applied, not taken for a duplicate",
    )
    wait_until(lambda: _pending(cloud_node) == 0, what="everything acknowledged")
    with cloud_node.db.read() as conn:
        seqs = sorted(conn.scalars(sa.select(EdgeEvent.seq).where(EdgeEvent.edge_id == edge.id)))
    assert seqs[0] > 3  # moved past the edge's mark
    link_runner.stop_edge(h)
    link_runner.stop_cloud(server, 0.2)
    box.close()


def test_a_sync_slower_than_the_ack_of_the_edges_own_devices_keeps_them(
    cloud_node, tmp_path, platform, link_runner
):
    """The Sync Edge's list is written before the edge's offline devices are applied; their acks
    come back in one round trip, the sync in many (batches of one here). The edge keeps them."""
    edge, secret = _acme_edge(cloud_node, [f"a{i}" for i in range(20)])
    server = link_runner.start_cloud(cloud_node, 0, batch_size=1, max_in_flight=1)
    box = _box(tmp_path, "box.db", platform, server, edge, secret)
    _drain_once(link_runner, box, cloud_node, "a19")
    with box.edge() as e:  # offline
        mine = {e.create_entity("device", f"d{i}", None, user_email="admin@acme.io").id for i in range(5)}
    with cloud_node.cloud() as c:
        c.request_sync(c.find_edge("e"))
    h = link_runner.start_edge(box)

    def synced():
        with box.db.read() as conn:
            done = conn.scalar(sa.text("SELECT value FROM node_config WHERE key = 'last_sync'"))
            unsent = conn.scalar(sa.text("SELECT count(*) FROM cloud_event WHERE status = 'PENDING'"))
        return done is not None and unsent == 0 and _pending(cloud_node) == 0

    wait_until(synced, what="the sync applied and the devices acknowledged")
    with box.db.read() as conn:
        held = set(conn.scalars(sa.select(Entity.id).where(Entity.type == "device")))
    assert held == mine
    link_runner.stop_edge(h)
    link_runner.stop_cloud(server, 0.2)
    box.close()


def test_a_new_database_for_an_edge_is_refused_until_an_operator_moves_the_edge(
    cloud_node, tmp_path, platform, link_runner
):
    from winstar_core.services.instances import reset_instance

    edge, secret = _acme_edge(cloud_node)
    server = link_runner.start_cloud(cloud_node, 0)
    first = _box(tmp_path, "first.db", platform, server, edge, secret)
    _drain_once(link_runner, first, cloud_node, "a1")
    # a new disk: same credentials, empty database, another instance
    fresh = _box(tmp_path, "fresh.db", platform, server, edge, secret)
    h2 = link_runner.start_edge(fresh)

    def refused():
        with fresh.db.read() as conn:
            return conn.scalar(sa.text("SELECT value FROM node_config WHERE key = 'last_error'"))

    error = wait_until(refused, what="the new box to be refused")
    assert "another box" in error and "reset-instance" in error
    assert "a1" not in _edge_names(fresh)
    link_runner.stop_edge(h2)
    with cloud_node.cloud() as c:
        reset_instance(c.session, c.find_edge("e"))
    h2 = link_runner.start_edge(fresh)
    wait_until(lambda: "a1" in _edge_names(fresh), what="the new box gets the edge's state")
    link_runner.stop_edge(h2)
    link_runner.stop_cloud(server, 0.2)
    first.close()
    fresh.close()


def test_a_long_drain_reports_its_progress(cloud_node, tmp_path, platform, link_runner, monkeypatch, caplog):
    monkeypatch.setattr(link, "PROGRESS_EVERY_S", 0.0)  # a progress line at every ack
    caplog.set_level(logging.INFO, logger="winstar_core.transport.link")
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, secret = c.create_edge("e", t)
        for i in range(120):
            c.assign(edge, c.create_entity("asset", f"a{i:03}", t))
    server = link_runner.start_cloud(cloud_node, 0, batch_size=25, max_in_flight=1)
    node = Node(f"sqlite:///{tmp_path / 'e.db'}", platform=platform)
    node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    h = link_runner.start_edge(node)

    def lines():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("downlinks to edge 'e':")]

    wait_until(lambda: any("drained" in m for m in lines()), what="the end of the drain")
    link_runner.stop_edge(h)
    link_runner.stop_cloud(server, 0.2)
    node.close()
    *steps, last = lines()
    # a line per ack; the drain's last batch has its end line instead (no count for it), unless
    # a wake (the node's poll) came just before its ack and said there may be more
    lines_seen = [m.split(" (")[0] for m in steps]
    expected = [
        f"downlinks to edge 'e': {n} delivered, 0 failed, {120 - n} pending" for n in (25, 50, 75, 100)
    ]
    assert lines_seen in (expected, [*expected, "downlinks to edge 'e': 120 delivered, 0 failed, 0 pending"])
    assert last.startswith("downlinks to edge 'e': drained 120 events in ") and last.endswith(", 0 failed")


def test_a_short_drain_says_nothing_and_a_long_one_says_when_it_ends():
    now = [0.0]
    said: list[str] = []
    p = DrainProgress("uplinks", every=2.0, report=said.append, clock=lambda: now[0])
    ok, bad = pb.EventResult(ok=True), pb.EventResult(ok=False, error="no")
    p.sending()
    now[0] = 1.0
    p.acked([ok] * 10)
    p.idle()
    assert said == []  # one second: no line at all
    p.sending()  # a second drain, from t=1
    now[0] = 3.5
    assert p.due()
    p.acked([ok] * 9 + [bad], pending=40)
    now[0] = 4.0
    assert not p.due()
    p.acked([ok] * 40)
    p.idle()
    assert said == [
        "uplinks: 9 delivered, 1 failed, 40 pending (4 events/s, about 10s left)",
        "uplinks: drained 50 events in 3.0s (17 events/s), 1 failed",
    ]
    p.idle()  # nothing sent since: no second last line
    assert len(said) == 2


def test_an_event_too_large_for_any_message_fails_and_the_link_goes_on(
    cloud_node, tmp_path, platform, link_runner
):
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, secret = c.create_edge("e", t)
        c.assign(edge, c.create_entity("asset", "before", t))
        # written past the store's own limit (by a plugin, or under an older release): larger than
        # any gRPC message the edge accepts, so it can never travel
        huge = b"x" * (link.MAX_MESSAGE_BYTES + 1)
        c.outbox.downlink(edge.id, OutboxEvent(t.id, "asset", ADDED, uuid.uuid4(), huge))
        c.assign(edge, c.create_entity("asset", "after", t))
    server = link_runner.start_cloud(cloud_node, 0)
    node = Node(f"sqlite:///{tmp_path / 'e.db'}", platform=platform)
    node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    h = link_runner.start_edge(node)
    wait_until(lambda: _edge_names(node) == {"before", "after"}, what="the events around the large one")
    wait_until(lambda: _pending(cloud_node) == 0)
    with cloud_node.db.read() as conn:
        rows = conn.execute(sa.select(EdgeEvent.status, EdgeEvent.error).order_by(EdgeEvent.seq)).all()
    assert [status for status, _ in rows] == ["DELIVERED", "FAILED", "DELIVERED"]
    assert f"{len(huge):,} bytes" in rows[1].error and "larger than" in rows[1].error
    assert h.client.sessions == 1  # one session all along: the link never broke over it
    link_runner.stop_edge(h)
    link_runner.stop_cloud(server, 0.2)
    node.close()


@pytest.fixture
def tls_files(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls(cloud_node, tmp_path, platform, link_runner, tls_files):
    cert, key = tls_files
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, secret = c.create_edge("e", t)
        c.assign(edge, c.create_entity("asset", "secure", t))
    server = link_runner.start_cloud(cloud_node, 0, tls_cert=cert.read_bytes(), tls_key=key.read_bytes())
    plain = Node(f"sqlite:///{tmp_path / 'plain.db'}", platform=platform)
    plain.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    h_plain = link_runner.start_edge(plain)  # no CA: speaks plaintext to a TLS server, never connects
    tls_edge = Node(f"sqlite:///{tmp_path / 'tls.db'}", platform=platform)
    tls_edge.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret, ca_file=str(cert))
    h_tls = link_runner.start_edge(tls_edge)
    wait_until(lambda: "secure" in _edge_names(tls_edge), what="the TLS edge syncs")
    assert "secure" not in _edge_names(plain) and not h_plain.client.connected.is_set()
    for h in (h_plain, h_tls):
        link_runner.stop_edge(h)
    link_runner.stop_cloud(server, 0.2)
    plain.close()
    tls_edge.close()


def test_forged_uplinks_are_refused(linked):
    """Another tenant, an entity the edge does not own: FAILED with the reason, nothing applied."""
    with linked.cloud.cloud() as c:
        other = c.create_tenant("Other")
        theirs = c.create_entity("device", "theirs", other)
        mine_cloud = c.create_entity("device", "cloud-owned", c.find_tenant("Acme"))
        theirs_id, cloud_owned_id = theirs.id, mine_cloud.id
    with linked.edge.edge() as e:
        fake = Entity(
            id=uuid.uuid4(),
            tenant_id=other.id,
            type="device",
            name="intruder",
            data=e.types.get("device").validate({}),
            version=1,
            origin_edge_id=e.edge_id,
        )
        e.outbox.uplink(
            OutboxEvent(other.id, "device", ADDED, fake.id, entity_state(fake, e.types).SerializeToString())
        )
        for target in (theirs_id, cloud_owned_id):
            ghost = Entity(id=target, tenant_id=e.tenant_id, type="device", name="hijack", data={}, version=5)
            ghost.data = e.types.get("device").validate({})
            e.outbox.uplink(
                OutboxEvent(
                    e.tenant_id, "device", "UPDATED", target, entity_state(ghost, e.types).SerializeToString()
                )
            )
        # past the store's limits (a name longer than its column, data heavier than an entity holds)
        blob = {"blob": "x" * MAX_DATA_BYTES}
        for name, data in (("n" * 300, {}), ("heavy", {"additional_info": blob})):
            odd = Entity(id=uuid.uuid4(), tenant_id=e.tenant_id, type="device", name=name, version=1)
            odd.data = e.types.get("device").validate(data)
            e.outbox.uplink(
                OutboxEvent(
                    e.tenant_id, "device", ADDED, odd.id, entity_state(odd, e.types).SerializeToString()
                )
            )
        e.create_entity("device", "sound", None, user_email="admin@acme.io")  # and a sound one after them

    def answered():
        with linked.edge.edge() as e:
            return not e.uplinks("pending")

    wait_until(answered, what="answers")
    with linked.edge.edge() as e:
        failed = {ev.error for ev in e.uplinks("failed")}
    assert (
        len(failed) >= 2
        and any("own tenant" in f for f in failed)
        and any("another tenant" in f for f in failed)
    )
    assert any("not owned by this edge" in f for f in failed)
    assert any("may be at most 255 characters, this one has 300" in f for f in failed)
    assert any("an entity may hold" in f for f in failed)
    with linked.cloud.cloud() as c:
        assert c.entities.find_entity("device", "sound").name == "sound"  # the events after them applied
        assert c.entities.find_entity("device", str(cloud_owned_id)).name == "cloud-owned"
        assert [d.name for d in c.entities.list_entities("device", other.id)] == ["theirs"]


class _Batch:
    """Downlink events for one edge tenant, numbered in order."""

    def __init__(self, tenant: uuid.UUID) -> None:
        self.tenant = tenant
        self.seq = 0
        self.events: list[pb.Event] = []

    def upsert(self, action, entity_id, type_, name, version, data):
        state = pb.EntityState(
            id=str(entity_id),
            type=type_,
            name=name,
            tenant_id=str(self.tenant),
            version=version,
            schema_version=1,
            payload=json.dumps(data).encode(),
        )
        self._add(action, type_, entity_id, state.SerializeToString())

    def delete(self, entity_id, type_):
        self._add("DELETED", type_, entity_id, b"")

    def member(self, container_id, member_id):
        body = pb.Membership(container_id=str(container_id), member_id=str(member_id)).SerializeToString()
        self._add("MEMBER_ADDED", "entity_group", container_id, body)

    def _add(self, action, type_, entity_id, body):
        self.seq += 1
        self.events.append(
            pb.Event(seq=self.seq, type=type_, action=action, entity_id=str(entity_id), body=body)
        )

    def take(self):
        out, self.events = self.events, []
        return out


def test_a_batch_applied_in_bulk_keeps_every_change_in_order(db_url, platform):
    """The edge writes entities new to it in one multi-row INSERT per batch: later events of the
    same batch (update, rename, delete, membership, a stale state, a name clash) must see them."""
    edge = Node(db_url, platform=platform)
    edge.init_edge("127.0.0.1:1", "k", "s")
    tenant = uuid.uuid4()
    with edge.edge() as e:
        e.apply_config(
            pb.EdgeConfig(edge_id=str(uuid.uuid4()), name="e", tenant_id=str(tenant), edition="ce"), []
        )
    receiver = downlink_receiver(edge)
    a, b, c, e_, g, d, f = (uuid.uuid4() for _ in range(7))
    batch = _Batch(tenant)
    batch.upsert("ADDED", a, "asset", "A", 1, {"label": "one"})
    batch.upsert("UPDATED", a, "asset", "A", 2, {"label": "two"})
    batch.upsert("ADDED", b, "asset", "B", 1, {})
    batch.upsert("UPDATED", b, "asset", "B2", 2, {})  # renamed in the same batch
    batch.upsert("ADDED", c, "asset", "C", 1, {})
    batch.delete(c, "asset")
    batch.upsert("ADDED", e_, "asset", "E", 3, {"label": "newest"})
    batch.upsert("UPDATED", e_, "asset", "E", 2, {"label": "stale"})  # older: ignored
    batch.upsert("ADDED", g, "entity_group", "G", 1, {"entity_type": "asset"})
    batch.member(g, a)
    ack, _ = receiver.apply_batch(batch.take())
    assert all(r.ok for r in ack.results), [r.error for r in ack.results if not r.ok]

    def state():
        with edge.db.read() as conn:
            rows = conn.execute(sa.select(Entity.name, Entity.version, Entity.data)).all()
            members = conn.execute(sa.select(EntityMember.container_id, EntityMember.member_id)).all()
        return {n: (v, d.get("label")) for n, v, d in rows}, members

    entities, members = state()
    assert entities == {"A": (2, "two"), "B2": (2, None), "E": (3, "newest"), "G": (1, None)}
    assert members == [(g, a)]

    # a new entity that takes a name already held: refused, the others of its batch kept
    batch.upsert("ADDED", d, "asset", "A", 1, {})
    batch.upsert("ADDED", f, "asset", "F", 1, {})
    ack, _ = receiver.apply_batch(batch.take())
    assert [r.ok for r in ack.results] == [False, True]
    assert "already exists" in ack.results[0].error
    entities, _ = state()
    assert set(entities) == {"A", "B2", "E", "G", "F"} and entities["A"] == (2, "two")
    edge.close()
