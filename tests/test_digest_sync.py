"""Sync Edge by digest (issue 9): an in-sync edge moves almost nothing, a drifted edge converges
exactly and keeps its own unacknowledged entities, the outcome is recorded and shown, and a
hostile digest or diff is refused with a reason without breaking anything."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from winstar_core.services import digest
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity
from winstar_core.transport.pb import sync_pb2 as pb

pytest_plugins = ["winstar_core.testing"]


def _world(kit, cloud, n):
    """Tenant Acme, its admin, edge "e" with ``n`` assets assigned, and the edge database,
    delivered up to date."""
    t = kit.tenant(cloud)
    kit.user(cloud, "admin@acme.io", t)
    edge = kit.edge(cloud, "e", t)
    with cloud.cloud() as c:
        e, tenant = c.find_edge("e"), c.find_tenant(t.id)
        for i in range(n):
            c.assign(e, c.create_entity("asset", f"a{i:04}", tenant))
    node = kit.edge_node(cloud, edge)
    assert kit.deliver_downlinks(cloud, node).ok
    assert kit.deliver_uplinks(node, cloud).ok  # the cloud adopts this edge database
    return edge, node


def _top(cloud, edge):
    with cloud.db.read() as conn:
        return int(
            conn.scalar(sa.select(sa.func.max(EdgeEvent.seq)).where(EdgeEvent.edge_id == edge.id)) or 0
        )


def _request(cloud):
    with cloud.cloud() as c:
        e = c.find_edge("e")
        c.request_sync(e)
        assert c.sync_if_due(e)


def _settle(kit, cloud, node):
    """Deliver both ways until neither side has anything pending."""
    for _ in range(10):
        down = kit.deliver_downlinks(cloud, node)
        up = kit.deliver_uplinks(node, cloud)
        if not down.verdicts and not up.verdicts:
            return
    raise AssertionError("the sync did not settle")


def _outcome(cloud):
    with cloud.cloud() as c:
        return c.sync_outcome(c.find_edge("e"))


def _names(node):
    with node.db.read() as conn:
        return set(conn.scalars(sa.select(Entity.name)))


def _sync_events(cloud, edge, after):
    with cloud.db.read() as conn:
        return conn.execute(
            sa.select(EdgeEvent.type, EdgeEvent.action, EdgeEvent.body)
            .where(EdgeEvent.edge_id == edge.id, EdgeEvent.seq > after)
            .order_by(EdgeEvent.seq)
        ).all()


def test_an_in_sync_edge_moves_under_one_percent_of_a_full_sync(kit, cloud_node):
    edge, node = _world(kit, cloud_node, 400)
    with cloud_node.cloud() as c:  # the full sync of the same edge, for comparison
        c.run_sync(c.find_edge("e"))
    _settle(kit, cloud_node, node)
    full = _outcome(cloud_node)
    assert (full["state"], full["added"]) == ("done", 400)
    before = _top(cloud_node, edge)
    _request(cloud_node)
    _settle(kit, cloud_node, node)
    events = _sync_events(cloud_node, edge, before)
    assert {t for t, _, _ in events} <= {"_user", "_sync"}  # no entity state at all
    assert [a for t, a, _ in events if t == "_sync"] == ["DIGEST", "SYNC"]
    end = pb.SyncEnd.FromString(events[-1][2])
    assert (end.scoped, end.final, list(end.buckets), list(end.entity_ids)) == (True, True, [], [])
    out = _outcome(cloud_node)
    assert {k: out[k] for k in ("state", "added", "updated", "removed", "unchanged", "failed", "held")} == {
        "state": "done",
        "added": 0,
        "updated": 0,
        "removed": 0,
        "unchanged": 400,
        "failed": 0,
        "held": 0,
    }
    assert 0 < out["bytes"] < full["bytes"] / 100, (out["bytes"], full["bytes"])
    assert len(_names(node)) == 400


def test_a_drifted_edge_converges_exactly_and_keeps_its_own(kit, cloud_node):
    edge, node = _world(kit, cloud_node, 300)
    with cloud_node.cloud() as c:
        changed = c.entities.find_entity("asset", "a0007")
        c.update_entity(changed, data={"label": "pump"})  # the edge misses this update
    with cloud_node.db.begin() as s:  # ...its downlink lost (a restored backup, say)
        s.execute(sa.update(EdgeEvent).where(EdgeEvent.status == "PENDING").values(status="DELIVERED"))
    with node.edge() as e:
        e.session.execute(sa.delete(Entity).where(Entity.name.in_(["a0001", "a0100"])))  # missing
        e.session.execute(sa.update(Entity).where(Entity.name == "a0200").values(version=9))  # other version
        e.session.add(  # extra: never assigned
            Entity(id=uuid.uuid4(), tenant_id=e.tenant_id, type="asset", name="stray", data={}, version=1)
        )
    with node.edge() as e:  # the edge's own device, not sent up yet
        mine = e.create_entity("device", "mine", None, user_email="admin@acme.io").id
    _request(cloud_node)
    assert kit.deliver_downlinks(cloud_node, node).ok  # the digest: the edge answers with a diff
    with node.db.begin() as s:  # the diff goes up before the device does (it stays PENDING)
        diffs = s.execute(
            sa.select(CloudEvent.seq, CloudEvent.body)
            .where(CloudEvent.type == "_sync")
            .order_by(CloudEvent.seq)
        ).all()
        s.execute(sa.update(CloudEvent).where(CloudEvent.type == "_sync").values(status="DELIVERED"))
    assert len(diffs) == 1 and pb.SyncDiff.FromString(diffs[0][1]).buckets
    events = [pb.Event(seq=seq, type="_sync", action="DIFF", body=body) for seq, body in diffs]
    assert kit.apply_uplinks(cloud_node, edge, events).ok  # (on a stream of its own: see apply_uplinks)
    assert kit.deliver_downlinks(cloud_node, node).ok
    wanted = {f"a{i:04}" for i in range(300)}
    assert _names(node) == wanted | {"mine"}  # the stray removed, the device kept
    with node.edge() as e:
        assert e.entities.find_entity("asset", "a0007").data.get("label") == "pump"
    out = _outcome(cloud_node)
    assert (out["state"], out["added"], out["removed"], out["failed"]) == ("done", 2, 1, 0)
    assert out["updated"] == 2  # a0007 (the cloud's update) and a0200 (the edge's other version)
    assert out["added"] + out["updated"] + out["unchanged"] == 300
    _settle(kit, cloud_node, node)  # the device goes up and stays
    with cloud_node.cloud() as c:
        assert c.entities.find_entity("device", mine).name == "mine"
    _request(cloud_node)  # and now the edge is in sync
    _settle(kit, cloud_node, node)
    again = _outcome(cloud_node)
    assert (again["state"], again["added"], again["updated"], again["removed"]) == ("done", 0, 0, 0)
    assert _names(node) == wanted | {"mine"}


def test_a_sync_in_which_an_entity_fails_says_so(kit, cloud_node):
    edge, node = _world(kit, cloud_node, 20)
    with node.edge() as e:  # drift: a0003 lost, and a stray entity holds its name
        e.session.execute(sa.delete(Entity).where(Entity.name == "a0003"))
        e.session.add(
            Entity(id=uuid.uuid4(), tenant_id=e.tenant_id, type="asset", name="a0003", data={}, version=1)
        )
    _request(cloud_node)
    _settle(kit, cloud_node, node)
    out = _outcome(cloud_node)
    assert out["state"] == "failed" and out["failed"] >= 1
    shown = kit.json(cloud_node, "edge", "show", "e")["sync"]
    assert (shown["state"], shown["failed"]) == ("failed", out["failed"])
    readable = kit.cli(cloud_node, "edge", "show", "e").stdout
    assert "failed" in readable and "bytes" in readable
    _request(cloud_node)  # the stray is gone since: the next sync converges
    _settle(kit, cloud_node, node)
    assert _outcome(cloud_node)["state"] == "done"
    assert _names(node) == {f"a{i:04}" for i in range(20)}


def test_edge_show_gives_the_whole_outcome(kit, cloud_node):
    _, node = _world(kit, cloud_node, 5)
    none = kit.json(cloud_node, "edge", "show", "e")["sync"]
    assert none["state"] == "none" and none["bytes"] is None
    kit.json(cloud_node, "edge", "sync", "e")
    assert kit.json(cloud_node, "edge", "show", "e")["sync"]["state"] == "pending"
    with cloud_node.cloud() as c:
        c.sync_if_due(c.find_edge("e"))
    assert kit.json(cloud_node, "edge", "show", "e")["sync"]["state"] == "running"
    _settle(kit, cloud_node, node)
    sync = kit.json(cloud_node, "edge", "show", "e")["sync"]
    assert set(sync) == {
        "state",
        "requested",
        "finished",
        "added",
        "updated",
        "removed",
        "unchanged",
        "failed",
        "held",
        "bytes",
    }
    assert (sync["state"], sync["requested"], sync["unchanged"], sync["failed"]) == ("done", False, 5, 0)
    assert sync["finished"] and sync["bytes"] > 0
    assert "done at" in kit.cli(cloud_node, "edge", "show", "e").stdout
    assert len(_names(node)) == 5


def _digest_event(seq, body):
    return pb.Event(seq=seq, type="_sync", action="DIGEST", body=body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff", "not a valid SyncDigest"),
        (
            pb.SyncDigest(sync_id="a%", bucket_bits=0, counts=[0], hashes=b"\0" * 8).SerializeToString(),
            "sync id",
        ),
        (pb.SyncDigest(sync_id="s", bucket_bits=17).SerializeToString(), "at most 2^16"),
        (
            pb.SyncDigest(sync_id="s", bucket_bits=2, counts=[1, 2], hashes=b"").SerializeToString(),
            "4 buckets",
        ),
        (
            pb.SyncDigest(sync_id="s", bucket_bits=1, counts=[1, 2], hashes=b"x" * 9).SerializeToString(),
            "hash bytes",
        ),
    ],
)
def test_a_broken_digest_is_refused_with_its_reason(kit, cloud_node, body, reason):
    _, node = _world(kit, cloud_node, 3)
    verdicts = kit.apply_downlinks(node, [_digest_event(10_000, body)]).verdicts
    assert not verdicts[0].ok and reason in verdicts[0].error, verdicts[0].error
    with node.db.read() as conn:
        assert (
            conn.scalar(sa.select(sa.func.count()).select_from(CloudEvent).where(CloudEvent.type == "_sync"))
            == 0
        )
    assert len(_names(node)) == 3


def _waiting(kit, cloud, n=300):
    """A world whose cloud waits for the edge's answer to a digest: (edge, node, digest)."""
    edge, node = _world(kit, cloud, n)
    _request(cloud)
    with cloud.db.read() as conn:
        body = conn.scalar(
            sa.select(EdgeEvent.body).where(EdgeEvent.edge_id == edge.id, EdgeEvent.action == "DIGEST")
        )
    return edge, node, pb.SyncDigest.FromString(body)


def _diff(seq, **fields):
    return pb.Event(seq=seq, type="_sync", action="DIFF", body=pb.SyncDiff(**fields).SerializeToString())


def test_a_broken_diff_is_refused_with_its_reason_and_breaks_nothing(kit, cloud_node):
    edge, node, sent = _waiting(kit, cloud_node)
    sid, bits = sent.sync_id, sent.bucket_bits
    an_id = uuid.UUID(int=0)
    many = b"".join(uuid.UUID(int=i).bytes for i in range(digest.MAX_DIFF_PAIRS + 1))
    cases = [
        (_diff(1, sync_id="other", part=0, parts=1), "not waiting for part 0"),
        (_diff(2, sync_id=sid, part=3, parts=1), "not waiting for part 3"),
        (_diff(3, sync_id=sid, part=0, parts=0), "is not a part of a diff"),
        (_diff(4, sync_id=sid, part=0, parts=1, buckets=[1 << bits]), "outside the digest"),
        (_diff(5, sync_id=sid, part=0, parts=1, buckets=[0, 0]), "increasing order"),
        (_diff(6, sync_id=sid, part=0, parts=1, buckets=[0], ids=b"123", tags=[1]), "16 bytes"),
        (_diff(7, sync_id=sid, part=0, parts=1, buckets=[0], ids=an_id.bytes * 2, tags=[1, 1]), "twice"),
        (
            _diff(8, sync_id=sid, part=0, parts=1, buckets=[0], ids=many, tags=[1] * (len(many) // 16)),
            "at most",
        ),
        (pb.Event(seq=9, type="_sync", action="DIFF", body=b"\xff"), "not a valid SyncDiff"),
    ]
    if bits:
        far = uuid.UUID(int=(1 << 127))  # in the last half of the buckets
        cases.append(
            (_diff(10, sync_id=sid, part=0, parts=1, buckets=[0], ids=far.bytes, tags=[1]), "none of its")
        )
    before = _top(cloud_node, edge)
    verdicts = kit.apply_uplinks(cloud_node, edge, [e for e, _ in cases]).verdicts
    for (event, reason), verdict in zip(cases, verdicts, strict=True):
        assert not verdict.ok and reason in verdict.error, (event.seq, verdict.error)
    assert _top(cloud_node, edge) == before  # nothing queued
    assert _outcome(cloud_node)["state"] == "running"
    _settle(kit, cloud_node, node)  # the real answer still works
    out = _outcome(cloud_node)
    assert (out["state"], out["unchanged"]) == ("done", 300)


@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    buckets=st.lists(st.integers(min_value=0, max_value=1 << 17), max_size=8),
    ids=st.binary(max_size=80),
    tags=st.lists(st.integers(min_value=0, max_value=(1 << 64) - 1), max_size=6),
    part=st.integers(min_value=0, max_value=3),
    parts=st.integers(min_value=0, max_value=3),
)
def test_any_diff_is_answered_or_refused_never_breaks(kit, buckets, ids, tags, part, parts):
    cloud = kit.cloud()  # a new SQLite cloud per example
    edge, _, sent = _waiting(kit, cloud, 3)
    before = _top(cloud, edge)
    body = pb.SyncDiff(sync_id=sent.sync_id, part=part, parts=parts, buckets=buckets, ids=ids, tags=tags)
    event = pb.Event(seq=1, type="_sync", action="DIFF", body=body.SerializeToString())
    verdict = kit.apply_uplinks(cloud, edge, [event]).verdicts[0]
    assert verdict.ok or verdict.error  # a verdict, whatever came
    if not verdict.ok:
        assert _top(cloud, edge) == before  # nothing queued


def test_over_a_real_link_an_in_sync_edge_is_checked_by_digest(linked):
    from winstar_core.transport.inprocess import wait_for

    with linked.cloud.cloud() as c:
        t, e = c.find_tenant("Acme"), c.find_edge("edge")
        for i in range(50):
            c.assign(e, c.create_entity("asset", f"a{i}", t))
    wait_for(lambda: len(_names(linked.edge)) == 50, what="the assets on the edge")
    with linked.edge.edge() as e:  # drift: one lost
        e.session.execute(sa.delete(Entity).where(Entity.name == "a7"))
    with linked.cloud.cloud() as c:
        c.request_sync(c.find_edge("edge"))

    def state():
        with linked.cloud.cloud() as c:
            return c.sync_outcome(c.find_edge("edge"))

    wait_for(lambda: state()["state"] == "done", what="the digest sync over gRPC")
    out = state()
    assert (out["added"], out["updated"], out["removed"], out["unchanged"]) == (1, 0, 0, 49)
    assert len(_names(linked.edge)) == 50
