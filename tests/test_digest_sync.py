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
from winstar_core.services.answer_writer import wait_for_answers
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity
from winstar_core.transport.pb import sync_pb2 as pb

pytest_plugins = ["winstar_core.testing"]


def _world(kit, cloud, n, more=None):
    """Tenant Acme, its admin, edge "e" with ``n`` assets assigned (and what ``more(cloud
    service, edge row, tenant row)`` adds), and the edge database, delivered up to date."""
    t = kit.tenant(cloud)
    kit.user(cloud, "admin@acme.io", t)
    edge = kit.edge(cloud, "e", t)
    with cloud.cloud() as c:
        e, tenant = c.find_edge("e"), c.find_tenant(t.id)
        for i in range(n):
            c.assign(e, c.create_entity("asset", f"a{i:04}", tenant))
        if more is not None:
            more(c, e, tenant)
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
        wait_for_answers()  # a large answer is written by a thread, after the diff's transaction
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


# --------------------------------------------------------------------------------------------------
# An answer written in several transactions (cloud_digest.ANSWER_CHUNK states each)
# --------------------------------------------------------------------------------------------------


def _mixed_world(kit, cloud, assets=25, devices=20, members=9):
    """Edge "e" holding ``assets`` assets, ``devices`` devices, a group of ``members`` of them
    (assigned: its members reach the edge through it) and a dashboard, all delivered."""

    def more(c, e, tenant):
        grouped = [c.create_entity("device", f"d{i:04}", tenant) for i in range(devices)]
        for d in grouped[members:]:
            c.assign(e, d)
        group = c.create_entity("entity_group", "G", tenant, {"entity_type": "device"})
        for d in grouped[:members]:
            c.add_member(group, d)
        c.assign(e, group)
        c.assign(e, c.create_entity("dashboard", "board", tenant))

    return _world(kit, cloud, assets, more)


def _state(node_or_cloud, edge=None):
    """(type, name, version) of every entity and (container, member) names of every membership:
    the edge's own, or (``edge`` given) what the cloud says that edge should hold."""
    from winstar_core.store.models import EntityMember

    if edge is None:
        with node_or_cloud.db.read() as conn:
            rows = set(conn.execute(sa.select(Entity.id, Entity.type, Entity.name, Entity.version)))
            links = set(conn.execute(sa.select(EntityMember.container_id, EntityMember.member_id)))
    else:
        with node_or_cloud.cloud() as c:
            held = {e.id: e for e in c.effective_entities(c.find_edge(edge))}
            rows = {(e.id, e.type, e.name, e.version) for e in held.values()}
            links = {(g.id, m.id) for g in held.values() if g.type == "entity_group" for m in c.members(g)}
    names = {i: n for i, _, n, _ in rows}
    return {(t, n, v) for _, t, n, v in rows}, {(names[g], names[m]) for g, m in links}


def _chunks(cloud, edge, after):
    """The progress ends a sync wrote after seq ``after`` (one per transaction but its last)."""
    ends = [pb.SyncEnd.FromString(b) for t, a, b in _sync_events(cloud, edge, after) if a == "SYNC"]
    return [e for e in ends if e.scoped and not e.counted]


def _check_order(cloud, edge, after, held_before):
    """In the sync's events: no membership before its member's state (unless the edge held the
    member already), no dashboard before a device or an asset (its dependencies)."""
    from winstar_core.transport.pb import sync_pb2

    sent: set[str] = set()
    kinds: list[str] = []
    for t, a, body in _sync_events(cloud, edge, after):
        if a in ("ADDED", "UPDATED"):
            sent.add(sync_pb2.EntityState.FromString(body).id)
            kinds.append(t)
        elif a == "MEMBER_ADDED":
            m = sync_pb2.Membership.FromString(body)
            assert m.member_id in sent | held_before, "a membership before its member"
            assert m.container_id in sent | held_before, "a membership before its container"
    if "dashboard" in kinds:
        assert all(k == "dashboard" for k in kinds[kinds.index("dashboard") :]), kinds


def _edge_ids(node):
    with node.db.read() as conn:
        return {str(i) for i in conn.scalars(sa.select(Entity.id))}


@pytest.fixture
def small_chunks(monkeypatch):
    from winstar_core.services import cloud_digest

    monkeypatch.setattr(cloud_digest, "ANSWER_CHUNK", 7)
    monkeypatch.setattr(cloud_digest, "END_IDS_PER_EVENT", 10)  # the ends in several groups too
    monkeypatch.setattr(cloud_digest, "PACE_WAIT_S", 0)  # no sender runs beside the writer here


def test_an_answer_in_several_transactions_converges_with_its_counts(
    kit, cloud_node, small_chunks, monkeypatch
):
    monkeypatch.setattr(digest, "PER_BUCKET", 4)  # 16 buckets: the end in groups of some of them
    edge, node = _mixed_world(kit, cloud_node)
    wanted = _state(cloud_node, "e")
    total = len(wanted[0])  # 25 assets, 20 devices, the group, the dashboard
    with node.edge() as e:  # drift: an empty box, but for a few entities, one of another version
        keep = ["a0003", "d0001", "d0015", "G"]
        e.session.execute(sa.delete(Entity).where(Entity.name.not_in(keep)))
        e.session.execute(sa.update(Entity).where(Entity.name == "d0015").values(version=5))
        e.session.add(
            Entity(id=uuid.uuid4(), tenant_id=e.tenant_id, type="asset", name="x", data={}, version=1)
        )
    held_before = _edge_ids(node)
    before = _top(cloud_node, edge)
    _request(cloud_node)
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted  # entities, versions and memberships: exactly the cloud's
    chunks = _chunks(cloud_node, edge, before)
    assert len(chunks) >= 5  # 43 states and 9 memberships, 7 a transaction
    assert len([c for c in chunks if c.buckets]) >= 2  # the ends of groups of buckets, but the last
    _check_order(cloud_node, edge, before, held_before)
    out = _outcome(cloud_node)
    assert {k: out[k] for k in ("state", "added", "updated", "removed", "failed", "held")} == {
        "state": "done",
        "added": total - 4,
        "updated": 2,  # d0015 (another version) and G (its members lost with them: another tag)
        "removed": 1,
        "failed": 0,
        "held": 0,
    }
    assert out["added"] + out["updated"] + out["unchanged"] == total
    _request(cloud_node)  # and now the edge is in sync: one empty diff, nothing chunked
    before = _top(cloud_node, edge)
    _settle(kit, cloud_node, node)
    again = _outcome(cloud_node)
    assert (again["state"], again["added"], again["updated"], again["unchanged"]) == ("done", 0, 0, total)
    assert _chunks(cloud_node, edge, before) == []


def test_a_diff_in_several_parts_each_answered_in_chunks(kit, cloud_node, small_chunks, monkeypatch):
    # the edge's diff comes in several parts (a bucket is never cut: each holds far fewer pairs)
    monkeypatch.setattr(digest, "MAX_DIFF_PAIRS", 10)
    monkeypatch.setattr(digest, "PER_BUCKET", 4)  # and the digest in many buckets
    edge, node = _mixed_world(kit, cloud_node, assets=40, devices=10, members=4)
    wanted = _state(cloud_node, "e")
    with node.edge() as e:  # every other entity lost, the rest of another version
        ids = sorted(e.session.scalars(sa.select(Entity.id)), key=str)
        e.session.execute(sa.delete(Entity).where(Entity.id.in_(ids[::2])))
        e.session.execute(sa.update(Entity).where(Entity.id.in_(ids[1::4])).values(version=7))
    before = _top(cloud_node, edge)
    _request(cloud_node)
    assert kit.deliver_downlinks(cloud_node, node).ok  # the digest: the diff, in parts
    with node.db.read() as conn:
        parts = conn.scalar(sa.select(sa.func.count()).where(CloudEvent.type == "_sync"))
    assert parts >= 3
    _settle(kit, cloud_node, node)  # every part in one batch of uplinks: a chain of answers
    assert _state(node) == wanted
    assert len(_chunks(cloud_node, edge, before)) >= 3
    out = _outcome(cloud_node)
    assert (out["state"], out["failed"], out["removed"]) == ("done", 0, 0)
    assert out["added"] == len(ids[::2])
    assert len(ids[1::4]) <= out["updated"] <= len(ids[1::4]) + 1  # (+ the group, if it lost members)
    assert out["added"] + out["updated"] + out["unchanged"] == len(wanted[0])


def _empty_edge(node):
    with node.edge() as e:
        e.session.execute(sa.delete(Entity))


def test_a_node_dying_between_two_transactions_of_an_answer_leaves_a_sync_to_request(
    kit, cloud_node, small_chunks, monkeypatch
):
    from winstar_core.services import cloud_sync
    from winstar_core.services.cloud_digest import CloudDigest

    edge, node = _mixed_world(kit, cloud_node, assets=30, devices=5, members=2)
    wanted = _state(cloud_node, "e")
    _empty_edge(node)
    finish = CloudDigest._finish
    monkeypatch.setattr(CloudDigest, "_finish", lambda self, bind, answer: False)  # the node dies
    _request(cloud_node)
    _settle(kit, cloud_node, node)  # the first transaction only: 7 states and a progress end
    assert len(_names(node)) == 7
    out = _outcome(cloud_node)
    assert out["state"] == "running" and out["added"] is None
    with cloud_node.cloud() as c:  # the edge reconnects (to another node): the cut is noticed
        e = c.find_edge("e")
        assert not c.sync_if_due(e) and e.sync_requested  # requested, not run: still in flight
    assert _outcome(cloud_node)["state"] == "pending"
    monkeypatch.setattr(CloudDigest, "_finish", finish)  # a node that lives
    monkeypatch.setattr(cloud_sync, "ANSWER_WAIT_MS", -1)  # (else 2 minutes after the last end)
    with cloud_node.cloud() as c:
        assert c.sync_if_due(c.find_edge("e"))
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted
    out = _outcome(cloud_node)
    assert (out["state"], out["added"], out["updated"], out["unchanged"]) == (
        "done",
        len(wanted[0]) - 7,
        0,
        7,
    )


def test_a_failure_between_two_transactions_of_an_answer_requests_the_sync_again(
    kit, cloud_node, small_chunks, monkeypatch
):
    from winstar_core.services.cloud_digest import CloudDigest

    edge, node = _mixed_world(kit, cloud_node, assets=30, devices=0, members=0)
    _empty_edge(node)
    real = CloudDigest._next_chunk
    calls = []

    def flaky(self, answer):
        calls.append(1)
        if len(calls) == 2:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("the database went away"))
        return real(self, answer)

    monkeypatch.setattr(CloudDigest, "_next_chunk", flaky)
    _request(cloud_node)
    assert kit.deliver_downlinks(cloud_node, node).ok
    assert kit.deliver_uplinks(node, cloud_node).ok  # the diff is applied: its answer was cut
    wait_for_answers()
    with cloud_node.cloud() as c:
        assert c.find_edge("e").sync_requested
    assert kit.deliver_downlinks(cloud_node, node).ok
    assert len(_names(node)) == 14  # two transactions of 7 states made it


def test_an_answer_superseded_by_a_later_sync_stops(kit, cloud_node, small_chunks, monkeypatch):
    from winstar_core.services import cloud_sync
    from winstar_core.services.cloud_digest import CloudDigest

    edge, node = _mixed_world(kit, cloud_node, assets=30, devices=0, members=0)
    wanted = _state(cloud_node, "e")
    _empty_edge(node)
    finish = CloudDigest._finish
    held = []
    monkeypatch.setattr(CloudDigest, "_finish", lambda self, bind, answer: held.append((self, bind, answer)))
    _request(cloud_node)
    _settle(kit, cloud_node, node)
    monkeypatch.setattr(cloud_sync, "ANSWER_WAIT_MS", -1)
    _request(cloud_node)  # a later Sync Edge starts before the answer goes on
    top = _top(cloud_node, edge)
    monkeypatch.setattr(CloudDigest, "_finish", finish)
    service, bind, answer = held[0]
    assert service._finish(bind, answer) is False  # ...which sees it and writes nothing more
    assert _top(cloud_node, edge) == top
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted
    out = _outcome(cloud_node)
    assert (out["state"], out["added"], out["unchanged"]) == ("done", len(wanted[0]) - 7, 7)


def test_a_diff_applied_beside_a_refused_event_is_answered_once_after_the_commit(
    kit, cloud_node, small_chunks
):
    edge, node = _mixed_world(kit, cloud_node, assets=30, devices=0, members=0)
    wanted = _state(cloud_node, "e")
    _empty_edge(node)
    _request(cloud_node)
    assert kit.deliver_downlinks(cloud_node, node).ok
    with node.db.begin() as s:
        diff = s.execute(sa.select(CloudEvent.body).where(CloudEvent.type == "_sync")).scalar_one()
        s.execute(sa.update(CloudEvent).where(CloudEvent.type == "_sync").values(status="DELIVERED"))
    events = [
        pb.Event(seq=1, type="_sync", action="DIFF", body=diff),
        pb.Event(seq=2, type="nope", action="ADDED", entity_id=str(uuid.uuid4())),  # refused
    ]
    before = _top(cloud_node, edge)
    verdicts = kit.apply_uplinks(cloud_node, edge, events).verdicts  # the batch again, in savepoints
    wait_for_answers()
    assert verdicts[0].ok and not verdicts[1].ok
    states = [a for _, a, _ in _sync_events(cloud_node, edge, before) if a in ("ADDED", "UPDATED")]
    assert len(states) == len(wanted[0]) and len(_chunks(cloud_node, edge, before)) >= 4  # written once
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted
    assert _outcome(cloud_node)["added"] == len(wanted[0])


def test_a_failing_entity_in_a_chunked_answer_is_counted_on_both_sides(kit, cloud_node, small_chunks):
    from winstar_core.store.models import NodeConfig

    edge, node = _mixed_world(kit, cloud_node, assets=30, devices=0, members=0)
    with node.edge() as e:  # everything lost, and a stray holds the name of a0020
        e.session.execute(sa.delete(Entity))
        e.session.add(
            Entity(id=uuid.uuid4(), tenant_id=e.tenant_id, type="asset", name="a0020", data={}, version=1)
        )
    _request(cloud_node)
    _settle(kit, cloud_node, node)
    out = _outcome(cloud_node)
    assert (out["state"], out["failed"]) == ("failed", 1)
    with node.db.read() as conn:
        refused = conn.scalar(sa.select(NodeConfig.value).where(NodeConfig.key == "last_sync_failed"))
    assert refused == 1  # counted over the answer's transactions, not the last one only


def test_a_full_sync_written_in_chunks_brings_everything_in_order(kit, cloud_node, small_chunks):
    edge, node = _mixed_world(kit, cloud_node)
    wanted = _state(cloud_node, "e")
    _empty_edge(node)
    before = _top(cloud_node, edge)
    with cloud_node.cloud() as c:
        written = c.run_sync(c.find_edge("e"))
    assert written == _top(cloud_node, edge) - before  # every event of it, across its flushes
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted
    _check_order(cloud_node, edge, before, set())
    out = _outcome(cloud_node)
    assert (out["state"], out["added"], out["failed"]) == ("done", len(wanted[0]), 0)


def test_a_member_sent_in_a_later_part_than_its_group_gets_its_membership(kit, cloud_node, monkeypatch):
    monkeypatch.setattr(digest, "MAX_DIFF_PAIRS", 6)  # the edge's diff comes in several parts
    monkeypatch.setattr(digest, "PER_BUCKET", 4)
    t = kit.tenant(cloud_node)
    kit.user(cloud_node, "admin@acme.io", t)
    edge = kit.edge(cloud_node, "e", t)
    with cloud_node.cloud() as c:  # the group in the first bucket, its members in the last one
        e, tenant = c.find_edge("e"), c.find_tenant(t.id)
        for i in range(25):  # spread over the 8 buckets, at most 4 in one (a part holds 6 pairs)
            spread = uuid.UUID(int=(i * 10 + 5) << 120 | uuid.uuid4().int >> 8)
            c.assign(e, c.create_entity("asset", f"a{i:04}", tenant, entity_id=spread))
        group = c.create_entity(
            "entity_group", "G", tenant, {"entity_type": "device"}, entity_id=uuid.UUID(int=1)
        )
        for i in range(3):
            member = c.create_entity("device", f"d{i}", tenant, entity_id=uuid.UUID(int=(1 << 128) - 1 - i))
            c.add_member(group, member)
        c.assign(e, group)
    node = kit.edge_node(cloud_node, edge)
    assert kit.deliver_downlinks(cloud_node, node).ok
    assert kit.deliver_uplinks(node, cloud_node).ok
    wanted = _state(cloud_node, "e")
    with node.edge() as e:  # the devices lost (and with them the group's memberships)
        e.session.execute(sa.delete(Entity).where(Entity.type == "device"))
        e.session.execute(sa.update(Entity).where(Entity.type == "asset").values(version=9))  # many parts
    before = _top(cloud_node, edge)
    _request(cloud_node)
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted  # the memberships too, in this very sync
    ends = [pb.SyncEnd.FromString(b) for _, a, b in _sync_events(cloud_node, edge, before) if a == "SYNC"]
    assert len(ends) >= 3 and ends[0].buckets[0] == 0 and ends[-1].buckets[-1] == 7  # G first, members last
    out = _outcome(cloud_node)
    assert (out["state"], out["added"], out["updated"]) == ("done", 3, 26)


def test_a_part_that_comes_while_the_answer_before_it_is_written_follows_it(
    kit, cloud_node, small_chunks, monkeypatch
):
    import threading

    from winstar_core.services import answer_writer, cloud_digest
    from winstar_core.services.cloud_digest import CloudDigest

    monkeypatch.setattr(cloud_digest, "ANSWER_CHUNK", 2)  # every part's answer in several transactions
    monkeypatch.setattr(digest, "MAX_DIFF_PAIRS", 10)  # several parts
    monkeypatch.setattr(digest, "PER_BUCKET", 4)
    edge, node = _mixed_world(kit, cloud_node, assets=40, devices=10, members=4)
    wanted = _state(cloud_node, "e")
    with node.edge() as e:  # every entity of another version: every part has its answer to write
        e.session.execute(sa.update(Entity).values(version=7))
    gate, finish = threading.Event(), CloudDigest._finish
    monkeypatch.setattr(CloudDigest, "_finish", lambda self, bind, a: gate.wait(30) and finish(self, bind, a))
    _request(cloud_node)
    assert kit.deliver_downlinks(cloud_node, node).ok
    with node.db.begin() as s:  # the parts, each in a batch of its own
        diffs = s.execute(
            sa.select(CloudEvent.seq, CloudEvent.body)
            .where(CloudEvent.type == "_sync")
            .order_by(CloudEvent.seq)
        ).all()
        s.execute(sa.update(CloudEvent).where(CloudEvent.type == "_sync").values(status="DELIVERED"))
    assert len(diffs) >= 3
    for seq, body in diffs:  # the first part's answer waits for the gate: the others are queued
        verdict = kit.apply_uplinks(
            cloud_node, edge, [pb.Event(seq=seq, type="_sync", action="DIFF", body=body)]
        )
        assert verdict.ok, verdict.errors
    assert answer_writer.answering(edge.id)  # all taken while the first answer still waits
    assert len(_chunks(cloud_node, edge, 0)) == 1  # its first transaction only
    gate.set()
    wait_for_answers()
    _settle(kit, cloud_node, node)
    assert _state(node) == wanted
    out = _outcome(cloud_node)
    assert (out["state"], out["updated"], out["added"]) == ("done", len(wanted[0]), 0)


def test_over_a_real_link_an_answer_in_chunks_is_streamed_to_the_edge(linked, monkeypatch):
    from winstar_core.services import cloud_digest
    from winstar_core.transport.inprocess import wait_for

    monkeypatch.setattr(cloud_digest, "ANSWER_CHUNK", 20)  # written by the node's writer thread,
    monkeypatch.setattr(cloud_digest, "END_IDS_PER_EVENT", 40)  # paced by what the edge acknowledges
    with linked.cloud.cloud() as c:
        t, e = c.find_tenant("Acme"), c.find_edge("edge")
        for i in range(150):
            c.assign(e, c.create_entity("asset", f"a{i}", t))
    wait_for(lambda: len(_names(linked.edge)) == 150, what="the assets on the edge")
    with linked.edge.edge() as e:  # drift: the edge lost them all
        e.session.execute(sa.delete(Entity))
    with linked.cloud.cloud() as c:
        c.request_sync(c.find_edge("edge"))

    def state():
        with linked.cloud.cloud() as c:
            return c.sync_outcome(c.find_edge("edge"))

    wait_for(lambda: state()["state"] == "done", timeout=60, what="the digest sync over gRPC")
    out = state()
    assert (out["added"], out["updated"], out["removed"], out["unchanged"], out["failed"]) == (
        150,
        0,
        0,
        0,
        0,
    )
    assert len(_names(linked.edge)) == 150
