"""Property: whatever an authenticated edge sends, message after message, the cloud answers each
message with an ack, a clear end of the session, or nothing; every event it acknowledges as applied
was applied exactly once; the stream never sticks (the next well-formed uplink is applied); and a
well-behaved edge of another tenant is served throughout. Cloud on PostgreSQL, real gRPC."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
import sqlalchemy as sa
from helpers import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_peer import RawCall, credentials, hello
from test_hostile_peers import assert_still_served, hostile  # noqa: F401 - the fixture

from winstar_core.store.models import Entity
from winstar_core.transport.limits import MAX_SEQ
from winstar_core.transport.pb import sync_pb2 as pb

pytestmark = pytest.mark.postgres

SPECIAL_SEQS = [0, 1, 2, 2**32, 2**32 + 7, MAX_SEQ, MAX_SEQ + 1, 2**64 - 1]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def events(draw, tenant_id: str):
    """One uplink: well-formed (a new device) or bent in one or more ways."""
    entity_id = str(uuid.uuid4())
    good = draw(st.booleans())
    name = f"p-{entity_id[:12]}" if good else draw(st.text(max_size=40) | st.just("x\x00y"))
    payload = (
        b"{}"
        if good
        else draw(
            st.sampled_from([b"{}", b"[" * 5000 + b"]" * 5000, b"\xff", b'{"label": 7}'])
            | json_values.map(lambda v: json.dumps(v).encode())
        )
    )
    state = pb.EntityState(
        id=entity_id if good else draw(st.sampled_from([entity_id, "", "nope", str(uuid.uuid4())])),
        type="device",
        name=name,
        tenant_id=tenant_id if good else draw(st.sampled_from([tenant_id, str(uuid.uuid4()), ""])),
        version=1,
        schema_version=1,
        payload=payload,
    )
    body = (
        state.SerializeToString() if good else draw(st.sampled_from([state.SerializeToString(), b"\x08\xff"]))
    )
    return {
        "good": good,
        "id": entity_id,
        "seq": None if good else draw(st.sampled_from([None, *SPECIAL_SEQS])),
        "event": pb.Event(
            type="device" if good else draw(st.sampled_from(["device", "asset", "nope", ""])),
            action="ADDED" if good else draw(st.sampled_from(["ADDED", "UPDATED", "DELETED", "BOOM"])),
            entity_id=entity_id if good else draw(st.sampled_from([entity_id, "", "zz"])),
            body=body,
        ),
    }


@st.composite
def messages(draw, tenant_id: str):
    kind = draw(st.sampled_from(["uplinks", "uplinks", "uplinks", "bytes", "ack", "other"]))
    if kind == "bytes":
        return ("bytes", draw(st.binary(max_size=64)))
    if kind == "ack":
        results = draw(
            st.lists(
                st.builds(pb.EventResult, seq=st.sampled_from(SPECIAL_SEQS), ok=st.booleans()), max_size=4
            )
        )
        return ("ack", pb.EdgeMessage(downlink_ack=pb.BatchAck(results=results)))
    if kind == "other":
        return (
            "other",
            draw(
                st.sampled_from(
                    [
                        pb.EdgeMessage(),
                        pb.EdgeMessage(sync_request=pb.SyncRequest()),
                        hello(),
                        pb.EdgeMessage(error=pb.Error(code="X", reason="bye\x00")),
                    ]
                )
            ),
        )
    batch = draw(st.lists(events(tenant_id), min_size=1, max_size=6))
    announce = draw(st.sampled_from(["right", "right", "right", "low", "huge"]))
    return ("uplinks", (batch, announce))


def _exists(h, entity_id: str) -> int:
    with h.cloud.db.read() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count()).select_from(Entity).where(Entity.id == uuid.UUID(entity_id))
            )
            or 0
        )


def _version(h, entity_id: str) -> int | None:
    with h.cloud.db.read() as conn:
        return conn.scalar(sa.select(Entity.version).where(Entity.id == uuid.UUID(entity_id)))


@settings(
    # each example is a session of its own and a round trip of the well-behaved edge (~0.2 s)
    max_examples=examples(100, thorough=200),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_whatever_an_edge_sends_acknowledged_means_applied_once(hostile, data):  # noqa: F811
    h = hostile
    tenant = str(h.tenant_id)
    call = RawCall(h.address, credentials(h.routing_key, h.secret))
    try:
        call.send(hello(h.__dict__.setdefault("instance", str(uuid.uuid4()))))
        welcome = call.recv_kind("welcome").welcome
        seq = welcome.applied_uplink_seq
        ended = False
        for kind, payload in data.draw(st.lists(messages(tenant), min_size=1, max_size=8)):
            if ended:
                break
            if kind != "uplinks":
                call.send(payload)
                continue
            batch, announce = payload
            for item in batch:
                if item["seq"] is None:
                    seq += 1
                    item["event"].seq = seq
                else:
                    item["event"].seq = item["seq"]
            valid = [i["event"].seq for i in batch if 1 <= i["event"].seq <= MAX_SEQ]
            last = {"right": max(valid, default=seq), "low": 1, "huge": 2**64 - 1}[announce]
            call.send(
                pb.EdgeMessage(uplinks=pb.EventBatch(events=[i["event"] for i in batch], last_seq=last))
            )
            while True:
                msg = call.recv(30)
                if msg is None:
                    ended = True
                    assert call.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK), (
                        call.code,
                        call.details,
                    )
                    break
                if msg.WhichOneof("msg") == "uplink_ack":
                    break
            if ended:
                for item in batch:  # a refused message applies nothing of it
                    if item["good"]:
                        assert _exists(h, item["id"]) == 0
                continue
            results = {r.seq: r for r in msg.uplink_ack.results}
            assert len(msg.uplink_ack.results) == len(batch)
            for item in batch:
                result = results[item["event"].seq]
                if item["good"] and item["seq"] is None:
                    # a well-formed new device with a fresh seq is applied, exactly once
                    assert result.ok, result.error
                    assert _exists(h, item["id"]) == 1 and _version(h, item["id"]) == 1
                if result.ok and item["good"]:
                    assert _exists(h, item["id"]) == 1
    finally:
        call.close()
    assert_still_served(h)
