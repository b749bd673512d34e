"""A scripted fake cloud for driving a real edge (EdgeClient) over real loopback gRPC.

The fake registers ``/winstar.edge.v1.EdgeSync/Connect`` with no (de)serializers, so a test
sends exactly the bytes it chooses (garbage included) and reads the edge's messages as bytes,
parsed here. Each Connect becomes a :class:`FakeSession` the test takes with
:meth:`FakeCloud.accept` and drives step by step: send bytes, expect a message, close.

Also here: the fixed identities of the edge the fake serves, builders of the messages a cloud
sends, and the edge database's rows as plain values for exact assertions.
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message

from winstar_core.node import Node
from winstar_core.store.models import (
    CloudEvent,
    Entity,
    NodeConfig,
    StreamCounter,
    StreamFailure,
    StreamMark,
    User,
)
from winstar_core.transport.common import SERVER_OPTIONS
from winstar_core.transport.limits import METADATA_ROUTING_KEY, METADATA_SECRET, SERVICE_NAME
from winstar_core.transport.pb import sync_pb2 as pb

# -- who the edge is -------------------------------------------------------------------------------

EDGE_ID = "00000000-0000-4000-8000-0000000000e1"
TENANT_ID = "00000000-0000-4000-8000-0000000000a1"
OTHER_TENANT_ID = "00000000-0000-4000-8000-0000000000a2"
ADMIN_ID = "00000000-0000-4000-8000-000000000001"
ADMIN = "admin@acme.io"
ROUTING_KEY = "rk"
SECRET = "secret"
MAX_SEQ = 2**63 - 1

EDGE_CONFIG = pb.EdgeConfig(
    edge_id=EDGE_ID, name="edge-1", tenant_id=TENANT_ID, tenant_name="Acme", customer_id="", edition="ce"
)
ADMIN_INFO = pb.UserInfo(id=ADMIN_ID, email=ADMIN, authority="TENANT_ADMIN", tenant_id=TENANT_ID)

_CLOSE = object()


class SessionEnded(AssertionError):
    """The edge ended the stream while the test expected a message."""


class FakeSession:
    """One Connect call of the edge, driven by the test thread."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.metadata = {k: v for k, v in context.invocation_metadata()}
        self._in: queue.Queue[bytes | None] = queue.Queue()
        self._out: queue.Queue[Any] = queue.Queue()
        #: every message the edge sent on this call, parsed, in order
        self.received: list[pb.EdgeMessage] = []
        #: the uplink batches received and not acknowledged yet by :meth:`ack`, oldest first
        self.in_flight: list[pb.EventBatch] = []
        self.ended = False

    # -- the test's side ----------------------------------------------------------------------------

    def send(self, msg: Message | bytes) -> None:
        self._out.put(msg if isinstance(msg, bytes) else msg.SerializeToString())

    def close(self) -> None:
        """End the call with status OK (the edge sees the cloud close the link). The fake also
        ends it when the edge is done writing (after its Error), as a cloud does."""
        self._out.put(_CLOSE)

    def recv(self, timeout: float = 10.0) -> pb.EdgeMessage | None:
        """The edge's next message; None once its stream has ended."""
        if self.ended:
            return None
        try:
            raw = self._in.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message from the edge within {timeout}s") from None
        if raw is None:
            self.ended = True
            return None
        msg = pb.EdgeMessage.FromString(raw)
        self.received.append(msg)
        if msg.WhichOneof("msg") == "uplinks":
            self.in_flight.append(msg.uplinks)
        return msg

    def poll(self) -> list[pb.EdgeMessage]:
        """The messages already there, without waiting."""
        out: list[pb.EdgeMessage] = []
        while not self.ended and not self._in.empty():
            msg = self.recv(0)
            if msg is not None:
                out.append(msg)
        return out

    def expect(self, kind: str, timeout: float = 10.0) -> Any:
        """The edge's next message, which must be a ``kind`` (``hello``, ``uplinks``,
        ``downlink_ack``, ``error``); returns its content."""
        msg = self.recv(timeout)
        if msg is None:
            raise SessionEnded(f"the edge ended the stream; expected {kind}")
        got = msg.WhichOneof("msg")
        assert got == kind, f"expected {kind} from the edge, got {got}: {msg}"
        return getattr(msg, kind)

    def expect_end(self, timeout: float = 10.0) -> list[pb.EdgeMessage]:
        """Read until the edge ends the stream; returns what it sent before."""
        seen: list[pb.EdgeMessage] = []
        while True:
            msg = self.recv(timeout)
            if msg is None:
                return seen
            seen.append(msg)

    def expect_uplinks(self, seqs: list[int], timeout: float = 10.0) -> list[pb.Event]:
        """Uplink batches until they hold exactly ``seqs`` (in order); returns their events."""
        events: list[pb.Event] = []
        while len(events) < len(seqs):
            batch = self.expect("uplinks", timeout)
            events.extend(batch.events)
        assert [e.seq for e in events] == seqs
        return events

    def ack(self, verdicts: dict[int, tuple[bool, str]] | None = None) -> pb.BatchAck:
        """Acknowledge the oldest batch in flight, as a well-behaved cloud does (all ok unless
        ``verdicts`` says otherwise for a seq)."""
        batch = self.in_flight.pop(0)
        results = []
        for e in batch.events:
            ok, error = (verdicts or {}).get(e.seq, (True, ""))
            results.append(pb.EventResult(seq=e.seq, ok=ok, error=error))
        ack = pb.BatchAck(results=results, applied_seq=batch.events[-1].seq)
        self.send(pb.CloudMessage(uplink_ack=ack))
        return ack

    def downlinks(self, events: list[pb.Event], last_seq: int | None = None) -> None:
        if last_seq is None:
            last_seq = max([e.seq for e in events if 1 <= e.seq <= MAX_SEQ], default=0)
        self.send(pb.CloudMessage(downlinks=pb.EventBatch(events=events, last_seq=last_seq)))

    # -- the server's side --------------------------------------------------------------------------

    def _read(self, requests: Any) -> None:
        try:
            for raw in requests:
                self._in.put(raw)
        except Exception:  # the call was cancelled: the stream simply ends
            pass
        finally:
            self._in.put(None)
            self._out.put(_CLOSE)  # the edge is done writing: end the call, as a cloud does

    def _responses(self) -> Any:
        while True:
            item = self._out.get()
            if item is _CLOSE:
                return
            yield item


class FakeCloud:
    """A gRPC server on 127.0.0.1 (a free port) whose every Connect becomes a :class:`FakeSession`."""

    def __init__(self) -> None:
        self._sessions: queue.Queue[FakeSession] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=SERVER_OPTIONS)
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self._connect, request_deserializer=None, response_serializer=None
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _connect(self, requests: Any, context: grpc.ServicerContext) -> Any:
        context.send_initial_metadata((("winstar-admitted", "1"),))  # "you are in", as a cloud says
        session = FakeSession(context)
        context.add_callback(lambda: session._out.put(_CLOSE))
        threading.Thread(target=session._read, args=(requests,), daemon=True, name="fake-cloud-read").start()
        self._sessions.put(session)
        yield from session._responses()

    def accept(self, timeout: float = 10.0) -> FakeSession:
        """The next Connect of the edge."""
        try:
            return self._sessions.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the edge did not connect within {timeout}s") from None

    def stop(self) -> None:
        self.server.stop(grace=0).wait(5)


# -- what a cloud sends -----------------------------------------------------------------------------


def welcome(
    users: list[pb.UserInfo] | None = None,
    *,
    config: pb.EdgeConfig = EDGE_CONFIG,
    applied_uplink_seq: int = 0,
    protocol_version: int = 1,
    max_message_bytes: int = 0,
) -> pb.CloudMessage:
    return pb.CloudMessage(
        welcome=pb.Welcome(
            edge=config,
            users=[ADMIN_INFO] if users is None else users,
            max_message_bytes=max_message_bytes,
            applied_uplink_seq=applied_uplink_seq,
            protocol_version=protocol_version,
        )
    )


def state(
    entity_id: str,
    name: str,
    type_: str = "asset",
    *,
    payload: bytes = b"{}",
    tenant_id: str = TENANT_ID,
    version: int = 1,
    schema_version: int = 1,
) -> pb.EntityState:
    return pb.EntityState(
        id=entity_id,
        type=type_,
        name=name,
        tenant_id=tenant_id,
        version=version,
        schema_version=schema_version,
        payload=payload,
    )


def entity_event(
    seq: int, entity_id: str, name: str, type_: str = "asset", action: str = "ADDED", **kw: Any
) -> pb.Event:
    body = state(entity_id, name, type_, **kw).SerializeToString()
    return pb.Event(seq=seq, type=type_, action=action, entity_id=entity_id, body=body, created_time=1)


def remove_event(seq: int, entity_id: str, type_: str = "device", action: str = "DELETED") -> pb.Event:
    return pb.Event(seq=seq, type=type_, action=action, entity_id=entity_id, created_time=1)


def user_event(seq: int, info: pb.UserInfo = ADMIN_INFO, action: str = "UPDATED") -> pb.Event:
    return pb.Event(
        seq=seq, type="_user", action=action, entity_id=info.id, body=info.SerializeToString(), created_time=1
    )


# -- the edge's database as plain values ------------------------------------------------------------


def entities(node: Node) -> dict[str, tuple[str, str]]:
    """id -> (type, name)."""
    with node.db.read() as conn:
        return {str(i): (t, n) for i, t, n in conn.execute(sa.select(Entity.id, Entity.type, Entity.name))}


def uplinks(node: Node) -> list[tuple[int, str, str, str | None, str, str | None]]:
    """cloud_event rows: (seq, type, action, entity_id, status, error), by seq."""
    with node.db.read() as conn:
        rows = conn.execute(
            sa.select(
                CloudEvent.seq,
                CloudEvent.type,
                CloudEvent.action,
                CloudEvent.entity_id,
                CloudEvent.status,
                CloudEvent.error,
            ).order_by(CloudEvent.seq)
        )
        return [(s, t, a, str(e) if e else None, st, err) for s, t, a, e, st, err in rows]


def statuses(node: Node) -> dict[int, str]:
    return {row[0]: row[4] for row in uplinks(node)}


def marks(node: Node) -> dict[str, int]:
    with node.db.read() as conn:
        return dict(conn.execute(sa.select(StreamMark.stream, StreamMark.applied_seq)).all())


def counters(node: Node) -> dict[str, int]:
    with node.db.read() as conn:
        return dict(conn.execute(sa.select(StreamCounter.stream, StreamCounter.last_seq)).all())


def failures(node: Node) -> dict[int, str]:
    with node.db.read() as conn:
        return dict(conn.execute(sa.select(StreamFailure.seq, StreamFailure.error)).all())


def config(node: Node, *keys: str) -> dict[str, Any]:
    with node.db.read() as conn:
        found = dict(conn.execute(sa.select(NodeConfig.key, NodeConfig.value)).all())
    return {k: found.get(k) for k in keys}


def users(node: Node) -> dict[str, tuple[str, str]]:
    """id -> (email, authority)."""
    with node.db.read() as conn:
        return {str(i): (e, a) for i, e, a in conn.execute(sa.select(User.id, User.email, User.authority))}


def check_hello(session: FakeSession, node: Node, applied_downlink_seq: int) -> pb.Hello:
    """The first message of a session: the credentials in the metadata, then a Hello."""
    assert session.metadata.get(METADATA_ROUTING_KEY) == ROUTING_KEY
    assert session.metadata.get(METADATA_SECRET) == SECRET
    hello = session.expect("hello")
    assert hello.protocol_version == 1
    assert hello.applied_downlink_seq == applied_downlink_seq
    assert hello.instance_id == node.instance_id()
    assert hello.max_message_bytes >= 8 * 1024 * 1024
    assert {t.type for t in hello.entity_types} >= {"device", "asset"}
    return hello
