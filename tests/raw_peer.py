"""A raw edge for the adversarial tests: a gRPC client built from the generated message classes
that sends whatever bytes a test chooses, in any order, with any metadata."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

import grpc
from google.protobuf.message import Message

from winstar_core.transport.limits import METADATA_ROUTING_KEY, METADATA_SECRET, SERVICE_NAME
from winstar_core.transport.pb import sync_pb2 as pb

_END = object()


class RawCall:
    """One ``Connect`` call. ``send`` takes bytes or a message; ``recv`` returns the next
    ``CloudMessage`` or None when the stream ended (then ``code``/``details`` say how)."""

    def __init__(self, address: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.enable_retries", 0),
            ],
        )
        self._out: queue.Queue[Any] = queue.Queue()
        self._in: queue.Queue[Any] = queue.Queue()
        connect = self.channel.stream_stream(
            f"/{SERVICE_NAME}/Connect", request_serializer=None, response_deserializer=None
        )
        self.call = connect(self._requests(), metadata=metadata)
        self.code: grpc.StatusCode | None = None
        self.details: str = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Any:
        while True:
            item = self._out.get()
            if item is _END:
                return
            yield item

    def _read(self) -> None:
        try:
            for raw in self.call:
                self._in.put(raw)
        except grpc.RpcError:
            pass
        self.code = self.call.code()
        self.details = self.call.details() or ""
        self._in.put(_END)

    def send(self, message: bytes | Message) -> None:
        self._out.put(message if isinstance(message, bytes) else message.SerializeToString())

    def recv(self, timeout: float = 20.0) -> pb.CloudMessage | None:
        raw = self._in.get(timeout=timeout)
        if raw is _END:
            self._in.put(_END)
            return None
        return pb.CloudMessage.FromString(raw)

    def recv_kind(self, kind: str, timeout: float = 20.0) -> pb.CloudMessage:
        """The next message of ``kind`` (downlink batches in between are skipped)."""
        while True:
            msg = self.recv(timeout)
            assert msg is not None, f"the stream ended ({self.code}: {self.details}) waiting for {kind}"
            if msg.WhichOneof("msg") == kind:
                return msg

    def ended(self, timeout: float = 20.0) -> tuple[grpc.StatusCode | None, str]:
        """Wait for the cloud to end the call; its status code and details."""
        while self.recv(timeout) is not None:
            pass
        return self.code, self.details

    def close(self) -> None:
        self._out.put(_END)
        self.call.cancel()
        self.channel.close()


def credentials(routing_key: str, secret: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_ROUTING_KEY, routing_key), (METADATA_SECRET, secret))


def hello(instance_id: str | None = None, **fields: Any) -> pb.EdgeMessage:
    fields.setdefault("protocol_version", 1)
    return pb.EdgeMessage(hello=pb.Hello(instance_id=instance_id or str(uuid.uuid4()), **fields))


def uplinks(*events: pb.Event, last_seq: int | None = None) -> pb.EdgeMessage:
    top = last_seq if last_seq is not None else max((e.seq for e in events), default=0)
    return pb.EdgeMessage(uplinks=pb.EventBatch(events=list(events), last_seq=top))


def device_added(
    seq: int, tenant_id: Any, name: str, entity_id: Any = None, payload: bytes = b"{}"
) -> pb.Event:
    """An ADDED uplink of a new device, as a real edge writes it."""
    entity_id = str(entity_id or uuid.uuid4())
    state = pb.EntityState(
        id=entity_id,
        type="device",
        name=name,
        tenant_id=str(tenant_id),
        version=1,
        schema_version=1,
        payload=payload,
    )
    return pb.Event(
        seq=seq, type="device", action="ADDED", entity_id=entity_id, body=state.SerializeToString()
    )
