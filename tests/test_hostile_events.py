"""Events from a broken or hostile peer, at the service layer: whatever a batch holds, each event
is applied or refused by itself with a one-line reason, the good events of the batch take effect,
the ack answers every event, and the rights of an edge follow its assignments.

Both directions: uplinks applied by the cloud (``uplink_receiver``, SQLite and PostgreSQL) and
downlinks applied by an edge (``downlink_receiver``, on an edge database of either kind)."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import secrets
import types
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields

from winstar_core import EntityType, hookimpl
from winstar_core.entity_types import MAX_DATA_DEPTH
from winstar_core.errors import InvalidData, WinstarError
from winstar_core.node import Node
from winstar_core.services import cloud as cloud_service
from winstar_core.services.common import BatchCache, parse_json_data
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity, User
from winstar_core.transport import link
from winstar_core.transport.client import downlink_receiver
from winstar_core.transport.pb import sync_pb2 as pb
from winstar_core.transport.server import uplink_receiver

#: a payload nested 100,000 levels deep: json.loads alone raises RecursionError on it
DEEP_PAYLOAD = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def nested(levels: int) -> dict:
    """An object nesting ``levels`` objects in all (itself included), built without recursion."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# -- building events --------------------------------------------------------------------------------


class Peer:
    """Entity events of one stream, numbered in order: the good ones and the poisoned ones."""

    def __init__(self, type_name: str, tenant_id: uuid.UUID, origin: uuid.UUID | None = None) -> None:
        self.type = type_name
        self.tenant = str(tenant_id)
        self.origin = str(origin) if origin else ""
        self.seqs = itertools.count(1)

    def state(self, entity_id: str, name: str, payload: bytes = b"{}", **extra) -> pb.EntityState:
        values = dict(tenant_id=self.tenant, version=1, schema_version=1, origin_edge_id=self.origin)
        values.update(extra)
        return pb.EntityState(id=entity_id, type=self.type, name=name, payload=payload, **values)

    def event(self, action: str, entity_id: str, body: bytes, type_name: str | None = None) -> pb.Event:
        return pb.Event(
            seq=next(self.seqs), type=type_name or self.type, action=action, entity_id=entity_id, body=body
        )

    def added(self, name: str, entity_id: uuid.UUID | None = None, action: str = "ADDED", **kw) -> pb.Event:
        eid = str(entity_id or uuid.uuid4())
        return self.event(action, eid, self.state(eid, name, **kw).SerializeToString())

    def poison(self, kind: str) -> pb.Event:
        """An ADDED event broken in one way (see :data:`POISONS`)."""
        eid = str(uuid.uuid4())
        if kind == "body not protobuf":
            return self.event("ADDED", eid, b"\xff\xfe\x00 not a protobuf message")
        if kind == "id not a UUID":
            return self.event("ADDED", "not-a-uuid", self.state("not-a-uuid", "p").SerializeToString())
        if kind == "empty id":
            return self.event("ADDED", "", self.state("", "p").SerializeToString())
        if kind == "NUL in name":
            return self.event("ADDED", eid, self.state(eid, "bad\x00name").SerializeToString())
        if kind == "100,000-deep JSON":
            return self.event("ADDED", eid, self.state(eid, "deep", DEEP_PAYLOAD).SerializeToString())
        raise AssertionError(kind)


#: each poison and the reason it must be refused with
POISONS = {
    "body not protobuf": "the event's body is not a valid EntityState",
    "id not a UUID": "the event's entity id 'not-a-uuid' is not a UUID",
    "empty id": "the event names no entity",
    "NUL in name": "name may not contain the NUL character",
    "100,000-deep JSON": "payload: its JSON nests too deeply to read",
}


def names(node: Node, type_name: str) -> set[str]:
    with node.db.read() as conn:
        return set(conn.scalars(sa.select(Entity.name).where(Entity.type == type_name)))


def assert_answers_every_event(ack: pb.BatchAck, batch: list[pb.Event]) -> None:
    assert [r.seq for r in ack.results] == [e.seq for e in batch]
    assert ack.applied_seq == batch[-1].seq
    for r in ack.results:
        assert r.ok or (r.error and "\n" not in r.error and len(r.error) <= 1000), r


# -- the two receivers ------------------------------------------------------------------------------


def _watched(receiver) -> list[BaseException]:
    """Record what the receiver's service raises that is not a refusal of the services' own (a
    WinstarError) or the database's last word on a constraint: a bare ValueError or DecodeError
    out of a parse, say, which the transport would still turn into a verdict."""
    strays: list[BaseException] = []
    apply_one, prepare = receiver.apply_one, receiver.prepare

    def checked_apply(service, event):
        try:
            apply_one(service, event)
        except (WinstarError, sa.exc.IntegrityError):
            raise
        except Exception as exc:
            strays.append(exc)
            raise

    def checked_prepare(service, events):
        try:
            prepare(service, events)
        except Exception as exc:  # the batch look-ups must take anything
            strays.append(exc)
            raise

    receiver.apply_one, receiver.prepare = checked_apply, checked_prepare
    return strays


def receiving(node: Node, receiver, peer: Peer, **more) -> types.SimpleNamespace:
    """A receiver of one stream, watched (see :func:`_watched`), and the peer writing to it."""
    return types.SimpleNamespace(node=node, receiver=receiver, peer=peer, strays=_watched(receiver), **more)


def applied(w: types.SimpleNamespace, batch: list[pb.Event]) -> pb.BatchAck:
    """``batch`` applied by ``w``'s receiver: it answers every event, and the services refused
    what they refused with their own errors."""
    w.strays.clear()
    ack, _ = w.receiver.apply_batch(batch)
    assert not w.strays, w.strays
    assert_answers_every_event(ack, batch)
    return ack


@pytest.fixture
def cloud(cloud_node):
    """A CE cloud (SQLite and PostgreSQL) with tenant Acme and edges A and A2, receiving A's
    uplinks."""
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        a, _ = c.create_edge("A", t)
        a2, _ = c.create_edge("A2", t)
    return receiving(
        cloud_node,
        uplink_receiver(cloud_node, a.id),
        Peer("device", t.id, a.id),
        tenant=t.id,
        a=a.id,
        a2=a2.id,
    )


def make_edge(url: str, platform) -> types.SimpleNamespace:
    """An edge database (of either kind) configured for a tenant, with one administrator,
    receiving the cloud's downlinks."""
    node = Node(url, platform=platform)
    node.init_edge("127.0.0.1:1", "k", "s")
    tenant = uuid.uuid4()
    admin = pb.UserInfo(
        id=str(uuid.uuid4()), email="admin@t.io", authority="TENANT_ADMIN", tenant_id=str(tenant)
    )
    config = pb.EdgeConfig(edge_id=str(uuid.uuid4()), name="e", tenant_id=str(tenant), edition="ce")
    with node.edge() as e:
        e.apply_config(config, [admin])
    return receiving(node, downlink_receiver(node), Peer("asset", tenant), tenant=tenant, config=config)


@pytest.fixture
def edge(db_url, platform):
    world = make_edge(db_url, platform)
    yield world
    world.node.close()


# -- one poisoned event among good ones -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(POISONS))
def test_a_poisoned_uplink_fails_alone(cloud, kind):
    batch = [cloud.peer.added("good-1"), cloud.peer.poison(kind), cloud.peer.added("good-2")]
    ack = applied(cloud, batch)
    assert [r.ok for r in ack.results] == [True, False, True]
    assert POISONS[kind] in ack.results[1].error, ack.results[1].error
    assert names(cloud.node, "device") == {"good-1", "good-2"}
    again = applied(cloud, batch)  # redelivered: the same verdicts, nothing applied twice
    assert [(r.ok, r.error) for r in again.results] == [(r.ok, r.error) for r in ack.results]


@pytest.mark.parametrize("kind", list(POISONS))
def test_a_poisoned_downlink_fails_alone(edge, kind):
    batch = [edge.peer.added("good-1"), edge.peer.poison(kind), edge.peer.added("good-2")]
    ack = applied(edge, batch)
    assert [r.ok for r in ack.results] == [True, False, True]
    assert POISONS[kind] in ack.results[1].error, ack.results[1].error
    assert names(edge.node, "asset") == {"good-1", "good-2"}


def _odd_downlinks(peer: Peer, tenant: uuid.UUID) -> list[tuple[pb.Event, str]]:
    """Downlinks wrong in every other way a parse can be wrong, with the reason expected."""
    eid, other = str(uuid.uuid4()), str(uuid.uuid4())
    membership = pb.Membership(container_id="group?", member_id=eid).SerializeToString()
    return [
        (peer.added("t", tenant_id="tenant?"), "the entity's tenant id 'tenant?' is not a UUID"),
        (peer.added("c", customer_id="cust?"), "the entity's customer id 'cust?' is not a UUID"),
        (peer.added("o", tenant_id=str(uuid.uuid4())), "only holds entities of its own tenant"),
        (
            peer.event("ADDED", eid, peer.state(other, "x").SerializeToString()),
            "the event's body does not describe its entity",
        ),
        (peer.added("big", payload=b'{"label": ' + b"9" * 5000 + b"}"), "unreadable asset payload"),
        (peer.added("nan", payload=b'{"label": NaN}'), "a number JSON cannot write"),
        (peer.added("deep", payload=json.dumps(nested(MAX_DATA_DEPTH + 1)).encode()), "nested more than"),
        (peer.added("n" * 300), "may be at most 255 characters"),
        (peer.event("DELETED", "", b""), "the event names no entity"),
        (peer.event("UNASSIGNED", "x", b""), "the event's entity id 'x' is not a UUID"),
        (peer.event("MEMBER_ADDED", eid, membership, "entity_group"), "container id 'group?' is not a UUID"),
        (peer.event("MEMBER_ADDED", eid, b"\xff", "entity_group"), "not a valid Membership"),
        (peer.event("BOGUS", eid, b""), "unknown downlink action 'BOGUS'"),
        (peer.event("UPDATED", "", b"\xff", "_user"), "not a valid UserInfo"),
        (
            peer.event("UPDATED", eid, pb.UserInfo(id="u?", email="x@t.io").SerializeToString(), "_user"),
            "the user's id 'u?' is not a UUID",
        ),
        (peer.event("DELETED", "u?", b"", "_user"), "the event's entity id 'u?' is not a UUID"),
        (
            peer.event("SYNC", "", pb.SyncEnd(entity_ids=[eid, "id?"]).SerializeToString(), "_sync"),
            "an entity id of the sync's list 'id?' is not a UUID",
        ),
        (
            peer.event("SYNC", "", pb.SyncEnd(sync_id="a%", part=1, parts=9).SerializeToString(), "_sync"),
            "the sync's id 'a%' is not",
        ),
        (peer.event("SYNC", "", b"\xff", "_sync"), "not a valid SyncEnd"),
        (
            peer.event(
                "UPDATED", "", pb.EdgeConfig(edge_id="e?", tenant_id=str(tenant)).SerializeToString(), "_edge"
            ),
            "edge id 'e?' is not a UUID",
        ),
    ]


def test_every_malformed_downlink_is_refused_with_its_reason(edge):
    first = edge.peer.added("first")
    cases = _odd_downlinks(edge.peer, edge.tenant)
    batch = [first, *(ev for ev, _ in cases), edge.peer.added("last")]
    ack = applied(edge, batch)
    verdicts = ack.results[1:-1]
    for (_, why), r in zip(cases, verdicts, strict=True):
        assert not r.ok and why in r.error, (why, r.error)
    assert ack.results[0].ok and ack.results[-1].ok
    assert names(edge.node, "asset") == {"first", "last"}
    with edge.node.edge() as e:  # the configuration did not move
        assert str(e.edge_id) == edge.config.edge_id and e.tenant_id == edge.tenant


def test_every_malformed_uplink_is_refused_with_its_reason(cloud):
    p = cloud.peer
    first = p.added("first")
    cases = [
        (p.added("c", customer_id="cust?"), "the entity's customer id 'cust?' is not a UUID"),
        (p.added("t", tenant_id=str(uuid.uuid4())), "may only create entities in its own tenant"),
        (p.added("  "), "the device needs a non-empty name"),
        (p.added("nan", payload=b'{"label": Infinity}'), "a number JSON cannot write"),
        (p.added("nul", payload=b'{"label": "a\\u0000b"}'), "NUL character"),
        (p.added("deep", payload=json.dumps(nested(MAX_DATA_DEPTH + 1)).encode()), "nested more than"),
        (p.event("DELETED", "", b""), "the event names no entity"),
        (p.event("DELETED", "?", b""), "the event's entity id '?' is not a UUID"),
        (p.event("BOGUS", str(uuid.uuid4()), b""), "unknown uplink action 'BOGUS'"),
        (p.event("ADDED", str(uuid.uuid4()), b"", "no_such_type"), "unknown entity type 'no_such_type'"),
        (p.event("ADDED", str(uuid.uuid4()), b"", "asset"), "cannot be created or changed on an edge"),
    ]
    batch = [first, *(ev for ev, _ in cases), p.added("last")]
    ack = applied(cloud, batch)
    for (_, why), r in zip(cases, ack.results[1:-1], strict=True):
        assert not r.ok and why in r.error, (why, r.error)
    assert names(cloud.node, "device") == {"first", "last"}


def test_a_name_with_spaces_around_it_is_cleaned_and_the_edge_told(cloud):
    batch = [cloud.peer.added("  padded  ")]
    ack = applied(cloud, batch)
    assert ack.results[0].ok
    assert names(cloud.node, "device") == {"padded"}
    with cloud.node.db.read() as conn:  # the edge hears the name the cloud keeps
        told = conn.execute(
            sa.select(EdgeEvent.action, EdgeEvent.body).where(EdgeEvent.edge_id == cloud.a)
        ).all()
    assert [(a, pb.EntityState.FromString(b).name) for a, b in told] == [("UPDATED", "padded")]


# -- a batch larger than PostgreSQL's 65,535 parameters ---------------------------------------------

#: larger than PostgreSQL's bind parameters per statement, if a statement took one per event
HUGE_BATCH = 80_000


def _many(peer: Peer, count: int, prefix: str) -> list[pb.Event]:
    """``count`` ADDED events, built cheaply: one template state, copied and named."""
    template = peer.state("", "")
    out = []
    for i in range(count):
        state = pb.EntityState()
        state.CopyFrom(template)
        state.id, state.name = str(uuid.uuid4()), f"{prefix}{i}"
        out.append(peer.event("ADDED", state.id, state.SerializeToString()))
    return out


class _Light(Schema):
    label = fields.String(load_default=None, allow_none=True)


class LightType(EntityType):
    """A creatable type that costs little to validate and that no assignment rule handles: the
    80,000 uplinks below measure the core, not a plugin's schema and rules."""

    name = "light"
    schema = _Light
    creatable_on_edge = True


class LightPlugin:
    @hookimpl
    def winstar_register_entity_types(self, register):
        register.add(LightType)


@pytest.mark.postgres
@pytest.mark.slow  # about 25 s: the cloud builds an ORM object per entity an edge creates
def test_a_batch_of_80000_uplinks_on_postgresql(pg_url, make_platform, monkeypatch):
    # the transport refuses batches over MAX_BATCH_EVENTS; the services must not depend on it
    monkeypatch.setattr(link, "MAX_BATCH_EVENTS", HUGE_BATCH)
    node = Node(pg_url, platform=make_platform(LightPlugin()))
    node.init_cloud("ce")
    with node.cloud() as c:
        t = c.create_tenant("Acme")
        a, _ = c.create_edge("A", t)
    up = receiving(node, uplink_receiver(node, a.id), Peer("light", t.id, a.id))
    ack = applied(up, _many(up.peer, HUGE_BATCH, "l"))
    assert all(r.ok for r in ack.results), next(r.error for r in ack.results if not r.ok)
    with node.db.read() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Entity)) == HUGE_BATCH
    node.close()


@pytest.mark.postgres
def test_a_batch_of_80000_downlinks_on_postgresql(pg_url, platform, monkeypatch):
    monkeypatch.setattr(link, "MAX_BATCH_EVENTS", HUGE_BATCH)
    world = make_edge(pg_url, platform)
    batch = _many(world.peer, HUGE_BATCH, "a")
    ack = applied(world, batch)
    assert all(r.ok for r in ack.results), next(r.error for r in ack.results if not r.ok)
    with world.node.db.read() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Entity)) == HUGE_BATCH
    world.node.close()


def test_the_batch_look_ups_skip_what_they_cannot_use(cloud):
    """The cache never fails on garbage; it loads what it can and names in chunks."""
    p = cloud.peer
    good = p.added("fine")
    events = [good, *(p.poison(kind) for kind in POISONS), p.added("x" * 256), p.added("")]
    with cloud.node.cloud() as c:  # on PostgreSQL, a NUL or an over-long name would break it
        cache = BatchCache.for_events(c.session, c.types, cloud.tenant, events)
    assert uuid.UUID(good.entity_id) in cache.absent
    assert cache.name_known("device", "fine") and cache.name_holder("device", "fine") is None
    assert cache.name_known("device", "deep")  # its payload is the apply's business
    for unusable in ("x" * 256, "", "bad\x00name"):
        assert not cache.name_known("device", unusable)


# -- the property: nothing a peer sends escapes ------------------------------------------------------

_ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "not-a-uuid", "x" * 300, "\u2028", "{}", str(uuid.UUID(int=0))]),
)
#: (what is odd, the odd value) for one event of a batch; None: a good event
_EVENT = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.just("body"), st.binary(max_size=80)),
    st.tuples(st.just("payload"), st.binary(max_size=80)),
    st.tuples(st.just("id"), _ODD_TEXT),
    st.tuples(st.just("name"), _ODD_TEXT),
    st.tuples(st.just("action"), _ODD_TEXT),
    st.tuples(st.just("type"), st.one_of(_ODD_TEXT, st.sampled_from(["_user", "_edge", "entity_group"]))),
    st.tuples(st.just("removal"), st.tuples(st.sampled_from(["DELETED", "UNASSIGNED"]), _ODD_TEXT)),
    st.tuples(st.just("membership"), st.binary(max_size=80)),
)


def _hostile_batch(peer: Peer, plan: list) -> tuple[list[pb.Event], list[int]]:
    """The batch ``plan`` describes, and the indexes of its good events."""
    batch, good = [], []
    for item in plan:
        eid = str(uuid.uuid4())
        if item is None:
            good.append(len(batch))
            batch.append(peer.added(f"good-{eid}", uuid.UUID(eid)))
            continue
        what, value = item
        if what == "body":
            batch.append(peer.event("ADDED", eid, value))
        elif what == "payload":
            batch.append(peer.event("ADDED", eid, peer.state(eid, f"p-{eid}", value).SerializeToString()))
        elif what == "id":
            batch.append(peer.event("UPDATED", value, peer.state(value, f"i-{eid}").SerializeToString()))
        elif what == "name":
            batch.append(peer.event("ADDED", eid, peer.state(eid, value).SerializeToString()))
        elif what == "action":
            batch.append(peer.event(value, eid, peer.state(eid, f"a-{eid}").SerializeToString()))
        elif what == "type":
            batch.append(peer.event("UPDATED", eid, b"\x0a\x03abc", value))
        elif what == "removal":
            batch.append(peer.event(value[0], value[1], b""))
        else:
            batch.append(peer.event("MEMBER_ADDED", eid, value, "entity_group"))
    return batch, good


def _property(w: types.SimpleNamespace, type_name: str, plan: list) -> None:
    batch, good = _hostile_batch(w.peer, plan)
    ack = applied(w, batch)  # never an exception, nor a stray one inside
    held = names(w.node, type_name)
    for i in good:
        assert ack.results[i].ok, ack.results[i].error
        assert pb.EntityState.FromString(batch[i].body).name in held


@pytest.fixture
def sqlite_cloud(sqlite_url, platform):
    """A CE cloud on SQLite with edge A, kept across a property test's examples (its seqs go on)."""
    node = Node(sqlite_url, platform=platform)
    node.init_cloud("ce")
    with node.cloud() as c:
        t = c.create_tenant("Acme")
        a, _ = c.create_edge("A", t)
    yield receiving(node, uplink_receiver(node, a.id), Peer("device", t.id, a.id))
    node.close()


@pytest.fixture
def sqlite_edge(sqlite_url, platform):
    world = make_edge(sqlite_url, platform)
    yield world
    world.node.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(_EVENT, min_size=1, max_size=8))
@example(plan=[None, ("body", b"\xff"), ("id", ""), ("name", "\x00"), ("type", "_user"), None])
def test_no_uplink_escapes_the_cloud(sqlite_cloud, plan):
    _property(sqlite_cloud, "device", plan)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(_EVENT, min_size=1, max_size=8))
@example(plan=[None, ("body", b"\xff"), ("id", ""), ("name", "\x00"), ("type", "_edge"), None])
def test_no_downlink_escapes_the_edge(sqlite_edge, plan):
    _property(sqlite_edge, "asset", plan)


# -- deep data, whoever sends it --------------------------------------------------------------------


def test_deep_data_is_refused_without_recursion(cloud):
    device = cloud.node.platform.types.get("device")
    with pytest.raises(InvalidData, match="nests too deeply to read") as caught:
        device.deserialize(DEEP_PAYLOAD)
    assert "\n" not in str(caught.value)
    deep = {"additional_info": nested(100_000)}
    with pytest.raises(InvalidData, match=f"nested more than {MAX_DATA_DEPTH} levels"):
        device.validate(deep)  # the depth check comes before the schema
    with pytest.raises(InvalidData, match=f"nested more than {MAX_DATA_DEPTH} levels"):
        device.check_storable(deep)
    looped: dict = {}
    looped["self"] = looped
    with pytest.raises(InvalidData, match="nested more than"):
        device.check_storable(looped)
    # MAX_DATA_DEPTH levels in all are fine; one more is not
    fits = {"additional_info": nested(MAX_DATA_DEPTH - 1)}
    assert device.deserialize(json.dumps(fits).encode())["additional_info"] == fits["additional_info"]
    with pytest.raises(InvalidData, match="nested more than"):
        device.deserialize(json.dumps({"additional_info": nested(MAX_DATA_DEPTH)}).encode())
    with cloud.node.cloud() as c, pytest.raises(InvalidData, match="nested more than"):
        c.create_entity("device", "deep", c.find_tenant("Acme"), deep)
    with pytest.raises(WinstarError, match="nests too deeply"):
        parse_json_data("[" * 100_000 + "]" * 100_000)


# -- rights follow the assignment -------------------------------------------------------------------


def _edges_of(node: Node, entity_id: uuid.UUID) -> set[uuid.UUID]:
    with node.cloud() as c:
        return c.effective_edges(entity_id)


def test_an_edge_cannot_change_a_device_assigned_away_from_it(cloud):
    dev = uuid.uuid4()
    ack = applied(cloud, [cloud.peer.added("d", dev)])
    assert ack.results[0].ok and _edges_of(cloud.node, dev) == {cloud.a}  # CE: assigned to A
    with cloud.node.cloud() as c:
        device = c.entities.find_entity("device", str(dev))
        c.unassign(c.find_edge("A"), device)
        c.assign(c.find_edge("A2"), device)
    batch = [
        cloud.peer.added("d renamed", dev, action="UPDATED", version=2, payload=b'{"label": "A was here"}'),
        cloud.peer.event("DELETED", str(dev), b""),
        cloud.peer.added("other"),
    ]
    ack = applied(cloud, batch)
    assert [r.ok for r in ack.results] == [False, False, True]
    for r in ack.results[:2]:
        assert r.error == "device 'd' is no longer assigned to this edge"
    with cloud.node.cloud() as c:  # unchanged, and on A2
        device = c.entities.find_entity("device", str(dev))
        assert (device.name, device.version, device.data["label"]) == ("d", 1, None)
    assert _edges_of(cloud.node, dev) == {cloud.a2}


def test_an_edge_may_change_what_it_created_in_the_same_batch(cloud):
    dev = uuid.uuid4()
    batch = [
        cloud.peer.added("new", dev),
        cloud.peer.added("newer", dev, action="UPDATED", version=2),
        cloud.peer.event("DELETED", str(dev), b""),
        cloud.peer.added("again", dev),  # re-created
    ]
    ack = applied(cloud, batch)
    assert all(r.ok for r in ack.results), [r.error for r in ack.results]
    assert names(cloud.node, "device") == {"again"}


def test_rights_through_a_container(pe_cloud_node):
    """PE: the device reaches its edge through the group [Edge] A All; out of the group, out of
    the edge's rights."""
    with pe_cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        a, _ = c.create_edge("A", t)
    world = receiving(pe_cloud_node, uplink_receiver(pe_cloud_node, a.id), Peer("device", t.id, a.id))
    peer = world.peer
    dev = uuid.uuid4()
    ack = applied(world, [peer.added("d", dev)])
    assert ack.results[0].ok
    ack = applied(world, [peer.added("d2", dev, action="UPDATED", version=2)])
    assert ack.results[0].ok  # assigned through the group
    with pe_cloud_node.cloud() as c:
        group = c.entities.find_entity("entity_group", "[Edge] A All")
        c.remove_member(group, c.entities.find_entity("device", str(dev)))
    ack = applied(world, [peer.added("d3", dev, action="UPDATED", version=3)])
    assert ack.results[0].error == "device 'd2' is no longer assigned to this edge"
    assert names(pe_cloud_node, "device") == {"d2"}


def test_a_batch_of_updates_looks_nothing_up_per_event(cloud):
    count = 30
    devices = [uuid.uuid4() for _ in range(count)]
    ack = applied(cloud, [cloud.peer.added(f"d{i}", d) for i, d in enumerate(devices)])
    assert all(r.ok for r in ack.results)

    def selects(batch: list[pb.Event]) -> int:
        seen: list[str] = []

        def count_select(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith("SELECT"):
                seen.append(statement)

        sa.event.listen(cloud.node.db.engine, "before_cursor_execute", count_select)
        try:
            ack = applied(cloud, batch)
        finally:
            sa.event.remove(cloud.node.db.engine, "before_cursor_execute", count_select)
        assert all(r.ok for r in ack.results), [r.error for r in ack.results]
        return len(seen)

    def updates(ids, version):
        return [
            cloud.peer.added(
                f"d{i}", d, action="UPDATED", version=version, payload=b'{"label": "%d"}' % version
            )
            for i, d in enumerate(ids)
        ]

    few, many = selects(updates(devices[:5], 2)), selects(updates(devices, 3))
    assert few == many, (few, many)


# -- what an edge keeps: its own changes the cloud has not received ---------------------------------


def _local_device(world, name: str) -> uuid.UUID:
    with world.node.edge() as e:
        return e.create_entity("device", name, None, user_email="admin@t.io").id


def _entity_names(world) -> set[str]:
    with world.node.db.read() as conn:
        return set(conn.scalars(sa.select(Entity.name)))


@pytest.mark.parametrize("action", ["DELETED", "UNASSIGNED"])
def test_a_removal_of_an_entity_with_pending_uplinks_is_refused(edge, action):
    mine = _local_device(edge, "mine")
    doomed = edge.peer.added("doomed")
    ack = applied(edge, [doomed])
    assert ack.results[0].ok
    batch = [
        edge.peer.event(action, str(mine), b"", "device"),
        edge.peer.event(action, doomed.entity_id, b""),
    ]
    ack = applied(edge, batch)
    assert [r.ok for r in ack.results] == [False, True]
    assert ack.results[0].error == (
        "device 'mine' has changes on this edge that the cloud has not received yet (uplink seq 1); kept"
    )
    assert _entity_names(edge) == {"mine"}
    with edge.node.edge() as e:  # a Sync Edge keeps it too
        e.apply_sync_end(pb.SyncEnd())
    assert _entity_names(edge) == {"mine"}
    # once the cloud has the change, the removal (retried) takes effect
    with edge.node.db.begin() as s:
        s.execute(sa.update(CloudEvent).values(status="DELIVERED"))
    ack = applied(edge, [edge.peer.event(action, str(mine), b"", "device")])
    assert ack.results[0].ok and _entity_names(edge) == set()


# -- users and configuration from the cloud ----------------------------------------------------------


def _users(world) -> set[str]:
    with world.node.db.read() as conn:
        return set(conn.scalars(sa.select(User.email)))


def test_a_welcome_upserts_users_and_skips_the_bad_ones(edge, caplog):
    caplog.set_level(logging.WARNING, logger="winstar_core.services.edge")
    tenant = str(edge.tenant)
    good = pb.UserInfo(id=str(uuid.uuid4()), email="good@t.io", authority="CUSTOMER_USER", tenant_id=tenant)
    bad = [
        pb.UserInfo(id="user?", email="a@t.io", authority="TENANT_ADMIN"),
        pb.UserInfo(id=str(uuid.uuid4()), email=" ", authority="TENANT_ADMIN"),
        pb.UserInfo(id=str(uuid.uuid4()), email="b\x00@t.io", authority="TENANT_ADMIN"),
        pb.UserInfo(id=str(uuid.uuid4()), email="c@t.io", authority="ROOT"),
        pb.UserInfo(id=str(uuid.uuid4()), email="d@t.io", authority="TENANT_ADMIN", tenant_id="t?"),
        pb.UserInfo(
            id=str(uuid.uuid4()), email="e@t.io", authority="TENANT_ADMIN", tenant_id=str(uuid.uuid4())
        ),
        pb.UserInfo(id=str(uuid.uuid4()), email="f@t.io", authority="TENANT_ADMIN", customer_id="c?"),
    ]
    with edge.node.edge() as e:
        e.apply_config(edge.config, [bad[0], good, *bad[1:]])
    assert _users(edge) == {"admin@t.io", "good@t.io"}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(bad)
    for why in ("'user?' is not a UUID", "has no email", "NUL", "'ROOT' is not one of", "'t?' is not a UUID"):
        assert any(why in line for line in skipped), (why, skipped)
    assert any("another tenant" in line for line in skipped)
    with edge.node.edge() as e:  # a Welcome without users removes none
        e.apply_config(edge.config, [])
    assert _users(edge) == {"admin@t.io", "good@t.io"}
    # only a _user DELETED downlink does
    ack = applied(edge, [edge.peer.event("DELETED", good.id, b"", "_user")])
    assert ack.results[0].ok and _users(edge) == {"admin@t.io"}


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("edge_id", "edge?", "edge id 'edge?' is not a UUID"),
        ("tenant_id", "", "tenant id is empty"),
        ("customer_id", "c?", "customer id 'c?' is not a UUID"),
        ("edition", "enterprise", "edition 'enterprise' is not one of ce, pe"),
        ("name", "a\x00b", "may not contain the NUL character"),
    ],
)
def test_an_edge_configuration_that_is_not_one_is_refused(edge, field, value, why):
    config = pb.EdgeConfig()
    config.CopyFrom(edge.config)
    setattr(config, field, value)
    with pytest.raises(WinstarError, match=re.escape(why)), edge.node.edge() as e:
        e.apply_config(config, [])
    with edge.node.edge() as e:
        assert str(e.edge_id) == edge.config.edge_id and e.tenant_id == edge.tenant


# -- the edge's secret ------------------------------------------------------------------------------


def test_a_secret_is_compared_exactly_and_at_the_same_cost(monkeypatch):
    secret = secrets.token_urlsafe(24)
    salt = secrets.token_bytes(16)
    edge = types.SimpleNamespace(secret_salt=salt, secret_hash=cloud_service.hash_secret(secret, salt))
    hashed: list[str] = []
    real = cloud_service.hash_secret

    def counting(value: str, salt: bytes) -> bytes:
        hashed.append(value)
        return real(value, salt)

    monkeypatch.setattr(cloud_service, "hash_secret", counting)
    assert cloud_service.check_secret(edge, secret)
    for wrong in (
        secret + "\x00",
        secret + "\x00\x00",
        "a" * 200,
        hashlib.sha256(secret.encode()).hexdigest(),
        hashlib.sha256(secret.encode()).digest().decode("latin-1"),
        "",
        secret + "\n",
        secret[:-1],
    ):
        before = len(hashed)
        assert not cloud_service.check_secret(edge, wrong), repr(wrong)
        assert len(hashed) == before + 1  # the same scrypt work: no fast path to time
