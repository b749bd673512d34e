from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntityTypeInfo(_message.Message):
    __slots__ = ("type", "schema_version", "plugin")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    type: str
    schema_version: int
    plugin: str
    def __init__(self, type: _Optional[str] = ..., schema_version: _Optional[int] = ..., plugin: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "entity_types", "max_message_bytes", "applied_downlink_seq", "instance_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_DOWNLINK_SEQ_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    entity_types: _containers.RepeatedCompositeFieldContainer[EntityTypeInfo]
    max_message_bytes: int
    applied_downlink_seq: int
    instance_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., entity_types: _Optional[_Iterable[_Union[EntityTypeInfo, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ..., applied_downlink_seq: _Optional[int] = ..., instance_id: _Optional[str] = ...) -> None: ...

class EntityState(_message.Message):
    __slots__ = ("id", "type", "name", "tenant_id", "customer_id", "version", "schema_version", "payload", "origin_edge_id", "replace")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    name: str
    tenant_id: str
    customer_id: str
    version: int
    schema_version: int
    payload: bytes
    origin_edge_id: str
    replace: bool
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ..., tenant_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., version: _Optional[int] = ..., schema_version: _Optional[int] = ..., payload: _Optional[bytes] = ..., origin_edge_id: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("container_id", "member_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    member_id: str
    def __init__(self, container_id: _Optional[str] = ..., member_id: _Optional[str] = ...) -> None: ...

class UserInfo(_message.Message):
    __slots__ = ("id", "email", "authority", "customer_id", "permissions", "tenant_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    authority: str
    customer_id: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    tenant_id: str
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., authority: _Optional[str] = ..., customer_id: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class SyncEnd(_message.Message):
    __slots__ = ("entity_ids", "sync_id", "part", "parts", "uplink_mark", "events", "scoped", "bucket_bits", "buckets", "digest_id", "answers", "covered_to", "final", "counted", "added", "updated", "removed", "unchanged", "received_bytes")
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_MARK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SCOPED_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BITS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    COVERED_TO_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    entity_ids: _containers.RepeatedScalarFieldContainer[str]
    sync_id: str
    part: int
    parts: int
    uplink_mark: int
    events: int
    scoped: bool
    bucket_bits: int
    buckets: _containers.RepeatedScalarFieldContainer[int]
    digest_id: str
    answers: int
    covered_to: int
    final: bool
    counted: bool
    added: int
    updated: int
    removed: int
    unchanged: int
    received_bytes: int
    def __init__(self, entity_ids: _Optional[_Iterable[str]] = ..., sync_id: _Optional[str] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., uplink_mark: _Optional[int] = ..., events: _Optional[int] = ..., scoped: _Optional[bool] = ..., bucket_bits: _Optional[int] = ..., buckets: _Optional[_Iterable[int]] = ..., digest_id: _Optional[str] = ..., answers: _Optional[int] = ..., covered_to: _Optional[int] = ..., final: _Optional[bool] = ..., counted: _Optional[bool] = ..., added: _Optional[int] = ..., updated: _Optional[int] = ..., removed: _Optional[int] = ..., unchanged: _Optional[int] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class SyncDigest(_message.Message):
    __slots__ = ("sync_id", "bucket_bits", "counts", "hashes", "uplink_mark", "events")
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BITS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    UPLINK_MARK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    sync_id: str
    bucket_bits: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    hashes: bytes
    uplink_mark: int
    events: int
    def __init__(self, sync_id: _Optional[str] = ..., bucket_bits: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ..., hashes: _Optional[bytes] = ..., uplink_mark: _Optional[int] = ..., events: _Optional[int] = ...) -> None: ...

class SyncDiff(_message.Message):
    __slots__ = ("sync_id", "part", "parts", "buckets", "ids", "tags")
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    sync_id: str
    part: int
    parts: int
    buckets: _containers.RepeatedScalarFieldContainer[int]
    ids: bytes
    tags: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sync_id: _Optional[str] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., buckets: _Optional[_Iterable[int]] = ..., ids: _Optional[bytes] = ..., tags: _Optional[_Iterable[int]] = ...) -> None: ...

class EdgeConfig(_message.Message):
    __slots__ = ("edge_id", "name", "tenant_id", "tenant_name", "customer_id", "edition")
    EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EDITION_FIELD_NUMBER: _ClassVar[int]
    edge_id: str
    name: str
    tenant_id: str
    tenant_name: str
    customer_id: str
    edition: str
    def __init__(self, edge_id: _Optional[str] = ..., name: _Optional[str] = ..., tenant_id: _Optional[str] = ..., tenant_name: _Optional[str] = ..., customer_id: _Optional[str] = ..., edition: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "type", "action", "entity_id", "body", "created_time")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    seq: int
    type: str
    action: str
    entity_id: str
    body: bytes
    created_time: int
    def __init__(self, seq: _Optional[int] = ..., type: _Optional[str] = ..., action: _Optional[str] = ..., entity_id: _Optional[str] = ..., body: _Optional[bytes] = ..., created_time: _Optional[int] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events", "last_seq")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    last_seq: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., last_seq: _Optional[int] = ...) -> None: ...

class EventResult(_message.Message):
    __slots__ = ("seq", "ok", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ok: bool
    error: str
    def __init__(self, seq: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("results", "applied_seq")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    applied_seq: int
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ..., applied_seq: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EdgeMessage(_message.Message):
    __slots__ = ("hello", "uplinks", "downlink_ack", "sync_request", "error")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    UPLINKS_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_ACK_FIELD_NUMBER: _ClassVar[int]
    SYNC_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    uplinks: EventBatch
    downlink_ack: BatchAck
    sync_request: SyncRequest
    error: Error
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., uplinks: _Optional[_Union[EventBatch, _Mapping]] = ..., downlink_ack: _Optional[_Union[BatchAck, _Mapping]] = ..., sync_request: _Optional[_Union[SyncRequest, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("edge", "users", "max_message_bytes", "applied_uplink_seq", "protocol_version", "entity_types")
    EDGE_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_UPLINK_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    edge: EdgeConfig
    users: _containers.RepeatedCompositeFieldContainer[UserInfo]
    max_message_bytes: int
    applied_uplink_seq: int
    protocol_version: int
    entity_types: _containers.RepeatedCompositeFieldContainer[EntityTypeInfo]
    def __init__(self, edge: _Optional[_Union[EdgeConfig, _Mapping]] = ..., users: _Optional[_Iterable[_Union[UserInfo, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ..., applied_uplink_seq: _Optional[int] = ..., protocol_version: _Optional[int] = ..., entity_types: _Optional[_Iterable[_Union[EntityTypeInfo, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CloudMessage(_message.Message):
    __slots__ = ("welcome", "downlinks", "uplink_ack", "error")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DOWNLINKS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    downlinks: EventBatch
    uplink_ack: BatchAck
    error: Error
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., downlinks: _Optional[_Union[EventBatch, _Mapping]] = ..., uplink_ack: _Optional[_Union[BatchAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
