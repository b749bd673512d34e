"""The cloud against a hostile or broken edge: a raw gRPC client (tests/raw_peer.py) built from the
generated message classes sends what no real edge would. After each attack a well-behaved edge of
another tenant, connected all along, is still served, and nothing is acknowledged without being
applied. The cloud runs on PostgreSQL, as in production."""

from __future__ import annotations

import contextlib
import logging
import types
import uuid

import grpc
import pytest
import sqlalchemy as sa
from procs import wait_until
from raw_peer import RawCall, credentials, device_added, hello, uplinks

from winstar_core.node import Node
from winstar_core.store.models import EdgeEvent, Entity, StreamMark
from winstar_core.transport.limits import MAX_BATCH_EVENTS, MAX_SEQ
from winstar_core.transport.pb import sync_pb2 as pb

pytestmark = pytest.mark.postgres

BIG = 2**64 - 1


@pytest.fixture
def hostile(pg_url, platform, link_runner, tmp_path):
    """A CE cloud on PostgreSQL with edge "E" of tenant Acme (the raw peer's credentials) and a
    well-behaved edge "G" of tenant Beta, connected through a real EdgeClient."""
    cloud = Node(pg_url, platform=platform)
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        acme = c.create_tenant("Acme")
        c.create_user("admin@acme.io", acme, "TENANT_ADMIN")
        e, e_secret = c.create_edge("E", acme)
        beta = c.create_tenant("Beta")
        c.create_user("admin@beta.io", beta, "TENANT_ADMIN")
        g, g_secret = c.create_edge("G", beta)
    server = link_runner.start_cloud(cloud, 0, batch_size=2, max_in_flight=1)
    good = Node(f"sqlite:///{tmp_path / 'good.db'}", platform=platform)
    good.init_edge(f"127.0.0.1:{server.port}", g.routing_key, g_secret)
    handle = link_runner.start_edge(good)
    link_runner.wait_connected(handle)
    h = types.SimpleNamespace(
        cloud=cloud,
        server=server,
        address=f"127.0.0.1:{server.port}",
        edge_id=e.id,
        tenant_id=acme.id,
        routing_key=e.routing_key,
        secret=e_secret,
        good=good,
        calls=[],
        served=0,
    )
    yield h
    for call in h.calls:
        call.close()
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, grace=0.2)
    good.close()
    cloud.close()


def _call(h, metadata=None) -> RawCall:
    call = RawCall(h.address, credentials(h.routing_key, h.secret) if metadata is None else metadata)
    h.calls.append(call)
    return call


def _session(h, instance: str | None = None) -> RawCall:
    """An authenticated raw session of edge E, past its Welcome."""
    call = _call(h)
    call.send(hello(instance or _instance(h)))
    call.recv_kind("welcome")
    return call


def _instance(h) -> str:
    """E's box: the first raw session's instance, kept for the test (the cloud serves one)."""
    if not hasattr(h, "instance"):
        h.instance = str(uuid.uuid4())
    return h.instance


def _devices(h) -> dict[str, int]:
    with h.cloud.db.read() as conn:
        rows = conn.execute(
            sa.select(Entity.name, sa.func.count())
            .where(Entity.type == "device", Entity.tenant_id == h.tenant_id)
            .group_by(Entity.name)
        )
        return {name: n for name, n in rows}


def _mark(h) -> int:
    with h.cloud.db.read() as conn:
        return int(
            conn.scalar(
                sa.select(StreamMark.applied_seq).where(StreamMark.stream.like(f"uplink:{h.edge_id}:%"))
            )
            or 0
        )


def assert_still_served(h) -> None:
    """The well-behaved edge of the other tenant: a change reaches it, and its change reaches the cloud."""
    h.served += 1
    name = f"after-attack-{h.served}"
    with h.cloud.cloud() as c:
        c.assign(c.find_edge("G"), c.create_entity("asset", name, c.find_tenant("Beta")))
    with h.good.edge() as e:
        device = e.create_entity("device", name, None, user_email="admin@beta.io")

    def arrived():
        with h.good.db.read() as conn:
            on_edge = conn.scalar(sa.select(Entity.id).where(Entity.name == name, Entity.type == "asset"))
        with h.cloud.db.read() as conn:
            in_cloud = conn.scalar(sa.select(Entity.id).where(Entity.id == device.id))
        return on_edge is not None and in_cloud is not None

    wait_until(arrived, 30, what="the well-behaved edge to be served")


# -- sequence rules ------------------------------------------------------------------------------------


def test_an_uplink_at_the_top_of_the_seq_range_cannot_move_the_mark(hostile):
    h = hostile
    call = _session(h)
    call.send(uplinks(device_added(MAX_SEQ, h.tenant_id, "far"), last_seq=MAX_SEQ))
    code, details = call.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "could have written" in details, details
    assert _mark(h) == 0 and "far" not in _devices(h)
    # the edge's normal uplinks are applied, not taken for duplicates
    call = _session(h)
    call.send(uplinks(device_added(1, h.tenant_id, "d1")))
    ack = call.recv_kind("uplink_ack").uplink_ack
    assert [(r.seq, r.ok) for r in ack.results] == [(1, True)]
    assert _devices(h) == {"d1": 1} and _mark(h) == 1
    assert_still_served(h)


def test_a_seq_out_of_range_is_that_events_failure_and_the_rest_applies(hostile):
    h = hostile
    call = _session(h)
    call.send(
        uplinks(
            device_added(0, h.tenant_id, "zero"),
            device_added(1, h.tenant_id, "d1"),
            device_added(BIG, h.tenant_id, "huge"),
            device_added(2, h.tenant_id, "d2"),
            last_seq=2,
        )
    )
    ack = call.recv_kind("uplink_ack").uplink_ack
    assert [(r.seq, r.ok) for r in ack.results] == [(0, False), (1, True), (BIG, False), (2, True)]
    assert "outside 1.." in ack.results[0].error and "outside 1.." in ack.results[2].error
    assert _devices(h) == {"d1": 1, "d2": 1} and _mark(h) == 2
    call.send(uplinks(device_added(3, h.tenant_id, "d3")))  # the session goes on
    assert call.recv_kind("uplink_ack").uplink_ack.results[0].ok
    assert_still_served(h)


@pytest.mark.parametrize(
    "seqs, last_seq, why",
    [
        ([2, 1], 2, "must increase"),
        ([1, 1], 1, "must increase"),
        ([5], 3, "beyond the last seq 3"),
        ([1], BIG, "outside 1.."),
    ],
)
def test_a_batch_that_breaks_the_seq_rules_ends_the_session_and_applies_nothing(hostile, seqs, last_seq, why):
    h = hostile
    call = _session(h)
    call.send(
        uplinks(*(device_added(s, h.tenant_id, f"d{i}") for i, s in enumerate(seqs)), last_seq=last_seq)
    )
    code, details = call.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and why in details, details
    assert _devices(h) == {} and _mark(h) == 0
    assert_still_served(h)


def test_a_duplicate_gets_its_first_verdict_and_is_applied_once(hostile):
    h = hostile
    call = _session(h)
    batch = uplinks(
        device_added(1, h.tenant_id, "d1"),
        device_added(2, h.tenant_id, "bad", payload=b'{"label": 7}'),
        device_added(3, h.tenant_id, "d3"),
    )
    call.send(batch)
    first = call.recv_kind("uplink_ack").uplink_ack
    call.send(batch)
    again = call.recv_kind("uplink_ack").uplink_ack
    assert [(r.seq, r.ok, r.error) for r in again.results] == [(r.seq, r.ok, r.error) for r in first.results]
    assert [r.ok for r in first.results] == [True, False, True]
    assert _devices(h) == {"d1": 1, "d3": 1}


def test_a_batch_larger_than_the_limit_is_refused_whole(hostile):
    h = hostile
    call = _session(h)
    n = 80_000
    state = pb.EntityState(
        type="device", tenant_id=str(h.tenant_id), version=1, schema_version=1, payload=b"{}"
    )
    events = []
    for i in range(1, n + 1):
        state.id = str(uuid.UUID(int=i))
        state.name = f"d{i}"
        events.append(
            pb.Event(seq=i, type="device", action="ADDED", entity_id=state.id, body=state.SerializeToString())
        )
    call.send(uplinks(*events))
    code, details = call.ended(60)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"at most {MAX_BATCH_EVENTS:,}" in details, details
    assert _devices(h) == {} and _mark(h) == 0
    # a batch at the limit is applied whole (split inside the database's limits)
    call = _session(h)
    call.send(uplinks(*events[:MAX_BATCH_EVENTS]))
    ack = call.recv_kind("uplink_ack", timeout=120).uplink_ack
    assert len(ack.results) == MAX_BATCH_EVENTS and all(r.ok for r in ack.results)
    assert len(_devices(h)) == MAX_BATCH_EVENTS
    assert_still_served(h)


# -- poison events ---------------------------------------------------------------------------------------


def _poison(tenant_id) -> dict[str, pb.Event]:
    base = device_added(2, tenant_id, "poison")
    deep = b"[" * 100_000 + b"]" * 100_000
    bad_id = pb.EntityState.FromString(base.body)
    bad_id.id = "not-a-uuid"
    no_id = pb.EntityState.FromString(base.body)
    no_id.id = ""
    return {
        "body is not protobuf": pb.Event(
            seq=2, type="device", action="ADDED", entity_id=base.entity_id, body=b"\xff\xfe garbage"
        ),
        "id is not a uuid": pb.Event(
            seq=2, type="device", action="ADDED", entity_id="not-a-uuid", body=bad_id.SerializeToString()
        ),
        "empty id": pb.Event(
            seq=2, type="device", action="ADDED", entity_id="", body=no_id.SerializeToString()
        ),
        "NUL in the name": device_added(2, tenant_id, "bad\x00name"),
        "JSON nested 100,000 deep": device_added(
            2, tenant_id, "deep", payload=b'{"additional_info": {"x": ' + deep + b"}}"
        ),
        "deep JSON list": device_added(2, tenant_id, "deep2", payload=deep),
        "unknown action": pb.Event(
            seq=2, type="device", action="EXPLODE", entity_id=base.entity_id, body=base.body
        ),
        "type not creatable on an edge": pb.Event(
            seq=2, type="asset", action="ADDED", entity_id=base.entity_id, body=base.body
        ),
        "unknown type": pb.Event(
            seq=2, type="nope", action="ADDED", entity_id=base.entity_id, body=base.body
        ),
    }


@pytest.mark.parametrize("case", list(_poison(uuid.uuid4())))
def test_a_poison_uplink_fails_alone_and_the_batch_applies(hostile, case, caplog):
    h = hostile
    caplog.set_level(logging.WARNING)
    call = _session(h)
    call.send(
        uplinks(
            device_added(1, h.tenant_id, "d1"), _poison(h.tenant_id)[case], device_added(3, h.tenant_id, "d3")
        )
    )
    ack = call.recv_kind("uplink_ack").uplink_ack
    assert [(r.seq, r.ok) for r in ack.results] == [(1, True), (2, False), (3, True)], ack
    assert ack.results[1].error and "\n" not in ack.results[1].error
    assert _devices(h) == {"d1": 1, "d3": 1} and _mark(h) == 3
    call.send(uplinks(device_added(4, h.tenant_id, "d4")))  # no redelivery loop: the stream moves on
    assert call.recv_kind("uplink_ack").uplink_ack.results[0].ok
    assert "Traceback" not in caplog.text
    assert_still_served(h)


# -- acknowledgements ------------------------------------------------------------------------------------


def _downlink_statuses(h) -> dict[int, str]:
    with h.cloud.db.read() as conn:
        rows = conn.execute(sa.select(EdgeEvent.seq, EdgeEvent.status).where(EdgeEvent.edge_id == h.edge_id))
        return {seq: status for seq, status in rows}


def _assign_assets(h, n: int) -> None:
    with h.cloud.cloud() as c:
        edge, tenant = c.find_edge("E"), c.find_tenant("Acme")
        for i in range(n):
            c.assign(edge, c.create_entity("asset", f"a{i}", tenant))


@pytest.mark.parametrize(
    "results, why",
    [
        ([pb.EventResult(seq=3, ok=True)], "does not answer the batch in flight"),  # queued, not sent
        ([pb.EventResult(seq=BIG, ok=True)], "does not answer the batch in flight"),
        ([pb.EventResult(seq=1, ok=True)], "does not answer the batch in flight"),  # half the batch
        ([pb.EventResult(seq=s % 2 + 1, ok=False, error="x" * 4) for s in range(100_000)], "does not answer"),
    ],
)
def test_an_ack_must_answer_the_batch_in_flight(hostile, results, why):
    h = hostile
    _assign_assets(h, 5)  # batches of 2, one in flight: seqs 1-2 are sent, 3-5 wait
    call = _session(h)
    sent = call.recv_kind("downlinks").downlinks
    assert [e.seq for e in sent.events] == [1, 2] and sent.last_seq == 5
    call.send(pb.EdgeMessage(downlink_ack=pb.BatchAck(results=results)))
    code, details = call.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and why in details, details
    assert set(_downlink_statuses(h).values()) == {"PENDING"}  # nothing marked by a bad ack
    # a well-behaved session then gets everything, each once
    call = _session(h)
    delivered = []
    while len(delivered) < 5:
        batch = call.recv_kind("downlinks").downlinks
        delivered += [e.seq for e in batch.events]
        call.send(
            pb.EdgeMessage(
                downlink_ack=pb.BatchAck(results=[pb.EventResult(seq=e.seq, ok=True) for e in batch.events])
            )
        )
    assert delivered == [1, 2, 3, 4, 5]
    wait_until(lambda: set(_downlink_statuses(h).values()) == {"DELIVERED"}, 20)


def test_an_ack_with_no_batch_in_flight_ends_the_session(hostile):
    h = hostile
    call = _session(h)
    call.send(pb.EdgeMessage(downlink_ack=pb.BatchAck(results=[pb.EventResult(seq=1, ok=True)])))
    code, details = call.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no batch in flight" in details
    assert_still_served(h)


def test_a_failed_verdict_with_hostile_text_is_stored_as_text(hostile):
    h = hostile
    _assign_assets(h, 2)
    call = _session(h)
    batch = call.recv_kind("downlinks").downlinks
    call.send(
        pb.EdgeMessage(
            downlink_ack=pb.BatchAck(
                results=[
                    pb.EventResult(seq=e.seq, ok=False, error="nul\x00" + "é" * 5000) for e in batch.events
                ]
            )
        )
    )
    wait_until(lambda: set(_downlink_statuses(h).values()) == {"FAILED"}, 20)
    with h.cloud.db.read() as conn:
        errors = list(conn.scalars(sa.select(EdgeEvent.error).where(EdgeEvent.edge_id == h.edge_id)))
    assert all(e.startswith("nul\\0é") and len(e) <= 2000 for e in errors)


# -- before authentication -------------------------------------------------------------------------------


def test_nothing_is_read_before_authentication(hostile, caplog):
    h = hostile
    caplog.set_level(logging.WARNING)
    cases = [
        ((), "no credentials"),
        (credentials(h.routing_key, "wrong"), "invalid routing key or secret"),
        (credentials("x" * 5000, h.secret), "invalid routing key or secret"),
        (credentials("' OR 1=1; --", h.secret), "invalid routing key or secret"),
        (credentials(str(uuid.uuid4()), h.secret), "invalid routing key or secret"),
    ]
    for metadata, why in cases:
        call = _call(h, metadata)
        call.send(b"\x0a" + b"\xff" * (15 * 1024 * 1024))  # a 15 MB first message, never read
        code, details = call.ended()
        assert code == grpc.StatusCode.UNAUTHENTICATED and why in details, (code, details)
        assert "SELECT" not in details and "secret_hash" not in details
    assert "Traceback" not in caplog.text
    assert_still_served(h)


def test_what_an_authenticated_edge_sends_first_is_checked(hostile):
    h = hostile
    cases = [
        (b"\xff\xfe not protobuf", grpc.StatusCode.INVALID_ARGUMENT, "not a valid EdgeMessage"),
        (uplinks(device_added(1, h.tenant_id, "d1")), grpc.StatusCode.INVALID_ARGUMENT, "must be a Hello"),
        (
            hello(_instance(h), entity_types=[pb.EntityTypeInfo(type="t", plugin="p" * 100_000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 65,536",
        ),
        (
            hello(_instance(h), protocol_version=99),
            grpc.StatusCode.FAILED_PRECONDITION,
            "protocol version 99",
        ),
        (
            hello(_instance(h), max_message_bytes=1000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_message_bytes 1,000",
        ),
        (
            hello(_instance(h), applied_downlink_seq=BIG),
            grpc.StatusCode.INVALID_ARGUMENT,
            "applied_downlink_seq",
        ),
        (hello("not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT, "no valid instance id"),
    ]
    for first, want, why in cases:
        call = _call(h)
        call.send(first)
        code, details = call.ended()
        assert code == want and why in details, (why, code, details)
    assert _devices(h) == {}
    assert_still_served(h)


def test_credentials_no_real_edge_could_send_are_refused_without_error(hostile):
    h = hostile
    for key, secret in [
        ("key\x00", h.secret),
        ("\udcff\udcfe", h.secret),
        (h.routing_key, h.secret + "\x00"),
        (h.routing_key, h.secret + "\x00\x00"),
        (h.routing_key, "\udcff"),
        (h.routing_key, ""),
    ]:
        assert h.server.authenticate(key, secret) is None
    assert h.server.authenticate(h.routing_key, h.secret) == (h.edge_id, h.tenant_id)


def test_the_wire_protocol_errors_of_a_session_end_it_cleanly(hostile, caplog):
    h = hostile
    caplog.set_level(logging.WARNING)
    for message, why in [
        (b"\xff\xff\xff", "not a valid EdgeMessage"),
        (pb.EdgeMessage(), "unexpected message"),
        (hello(_instance(h)), "unexpected message: hello"),
    ]:
        call = _session(h)
        call.send(message)
        code, details = call.ended()
        assert code == grpc.StatusCode.INVALID_ARGUMENT and why in details, (why, code, details)
    assert "Traceback" not in caplog.text
    assert_still_served(h)


# -- rights ------------------------------------------------------------------------------------------------


def test_an_edge_cannot_reach_into_another_tenant(hostile):
    h = hostile
    with h.cloud.cloud() as c:
        beta = c.find_tenant("Beta")
        theirs = c.create_entity("device", "theirs", beta)
    call = _session(h)
    other = device_added(1, h.tenant_id, "x", entity_id=theirs.id)
    deleted = pb.Event(seq=2, type="device", action="DELETED", entity_id=str(theirs.id))
    foreign = device_added(3, beta.id, "planted")
    call.send(uplinks(other, deleted, foreign))
    ack = call.recv_kind("uplink_ack").uplink_ack
    assert [r.ok for r in ack.results] == [False, False, False]
    with h.cloud.db.read() as conn:
        names = set(conn.scalars(sa.select(Entity.name).where(Entity.tenant_id == beta.id)))
    assert "theirs" in names and "planted" not in names


# -- what a peer can make the cloud write --------------------------------------------------------------


def test_asking_for_sync_again_and_again_writes_one_copy_of_the_edges_state(hostile):
    h = hostile
    _assign_assets(h, 3)
    call = _session(h)
    for _ in range(20):
        call.send(pb.EdgeMessage(sync_request=pb.SyncRequest()))
    call.send(uplinks(device_added(1, h.tenant_id, "d1")))
    call.recv_kind("uplink_ack")  # every request before it was handled
    for _ in range(3):  # and reconnecting with mark 0 asks for one too
        call = _session(h)
    with h.cloud.db.read() as conn:
        syncs = conn.scalar(
            sa.select(sa.func.count()).where(EdgeEvent.edge_id == h.edge_id, EdgeEvent.type == "_sync")
        )
    assert syncs == 1  # nothing acknowledged: the first sync is still on its way


def test_an_event_whose_fan_out_cannot_be_written_fails_alone(hostile):
    from winstar_core.store.models import StreamCounter
    from winstar_core.store.outbox import downlink_stream

    h = hostile
    call = _session(h)
    call.send(uplinks(device_added(1, h.tenant_id, "shared")))
    assert call.recv_kind("uplink_ack").uplink_ack.results[0].ok
    with h.cloud.cloud() as c:  # the device is also on another edge, whose stream is at its end
        other, _ = c.create_edge("E2", c.find_tenant("Acme"))
        c.assign(other, c.entities.find_entity("device", "shared"))
    with h.cloud.db.begin() as s:
        s.execute(
            sa.update(StreamCounter)
            .where(StreamCounter.stream == downlink_stream(other.id))
            .values(last_seq=MAX_SEQ)
        )
    with h.cloud.db.read() as conn:
        device_id = conn.scalar(sa.select(Entity.id).where(Entity.name == "shared"))
    state = pb.EntityState(
        id=str(device_id),
        type="device",
        name="shared",
        tenant_id=str(h.tenant_id),
        version=2,
        schema_version=1,
        payload=b'{"label": "changed"}',
    )
    update = pb.Event(
        seq=2, type="device", action="UPDATED", entity_id=str(device_id), body=state.SerializeToString()
    )
    call.send(uplinks(update, device_added(3, h.tenant_id, "d3")))
    ack = call.recv_kind("uplink_ack").uplink_ack
    assert [(r.seq, r.ok) for r in ack.results] == [(2, False), (3, True)], ack
    assert _devices(h) == {"shared": 1, "d3": 1} and _mark(h) == 3
    assert_still_served(h)


def test_a_peers_mark_moves_a_stream_by_a_bounded_step():
    """The renumbering past a peer's mark (a restored database) cannot be used to push a counter
    towards the end of the seq range: each step is at most MAX_SEQ_JUMP plus the pending span."""
    import tempfile

    from winstar_core.store.models import CloudEvent, StreamCounter
    from winstar_core.store.outbox import MAX_SEQ_JUMP, UPLINK_STREAM, MarkOutOfReach, move_past

    node = Node(f"sqlite:///{tempfile.mkdtemp()}/e.db")
    node.init_edge("127.0.0.1:1", "k", "s")
    with node.db.begin() as s:
        s.execute(sa.update(StreamCounter).where(StreamCounter.stream == UPLINK_STREAM).values(last_seq=10))
        for seq in range(5, 11):
            s.add(
                CloudEvent(
                    seq=seq, tenant_id=uuid.uuid4(), type="t", action="ADDED", body=b"", status="PENDING"
                )
            )
    for _ in range(40):  # a hostile cloud, reconnecting with the largest mark it may name
        with node.db.begin() as s:
            last = s.get(StreamCounter, UPLINK_STREAM).last_seq
            assert move_past(s, CloudEvent, last + MAX_SEQ_JUMP) == 6
    with node.db.begin() as s:
        last = s.get(StreamCounter, UPLINK_STREAM).last_seq
        seqs = sorted(s.scalars(sa.select(CloudEvent.seq)))
        with pytest.raises(MarkOutOfReach):
            move_past(s, CloudEvent, last + MAX_SEQ_JUMP + 1)
    assert last < 41 * (MAX_SEQ_JUMP + 6)  # linear, not doubling: far from MAX_SEQ
    assert seqs == list(range(last - 5, last + 1))  # in order, the last one at the counter
    node.close()


def test_two_sessions_applying_one_batch_at_once_apply_it_once(hostile):
    """A reconnect while a batch is still being applied (or a peer opening two calls) sends one
    batch to two receivers at once: the mark row's lock makes the second wait and answer with the
    first's verdicts. The batch look-ups wait for each other, so without the lock both would apply
    the batch's updates, and each would send them on to the edges that hold the devices."""
    import dataclasses
    import threading

    from winstar_core.transport.server import uplink_receiver

    h = hostile
    base = uplink_receiver(h.cloud, h.edge_id, str(uuid.uuid4()))
    added = [device_added(i, h.tenant_id, f"twice{i}") for i in range(1, 6)]
    assert all(r.ok for r in base.apply_batch(added, 5)[0].results)
    updated = []
    for event in added:
        state = pb.EntityState.FromString(event.body)
        state.version, state.payload = 2, b'{"label": "changed"}'
        updated.append(
            pb.Event(
                seq=event.seq + 5,
                type="device",
                action="UPDATED",
                entity_id=event.entity_id,
                body=state.SerializeToString(),
            )
        )
    barrier = threading.Barrier(2)

    def prepare(cloud, events):
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)  # only meets the other receiver if both got past the mark
        base.prepare(cloud, events)

    acks = []

    def apply():
        receiver = dataclasses.replace(base, prepare=prepare)
        acks.append(receiver.apply_batch(updated, 10)[0])

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(acks) == 2
    for ack in acks:
        assert [(r.seq, r.ok) for r in ack.results] == [(i, True) for i in range(6, 11)], ack
    with h.cloud.db.read() as conn:
        sent_on = conn.scalar(
            sa.select(sa.func.count()).where(EdgeEvent.edge_id == h.edge_id, EdgeEvent.action == "UPDATED")
        )
    assert sent_on == 5  # each update applied, and sent on, once
