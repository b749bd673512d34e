"""The cloud's gRPC server: one bidirectional stream per connected edge.

Nothing a client sends is read before it is authenticated: the routing key and secret travel in
the call's metadata (bounded by gRPC's header limit), the first message is read only after they
check out, and it must be a small Hello. Failed attempts are throttled per address and per routing
key (:mod:`winstar_core.transport.throttle`). Every message is decoded here, not by gRPC, so a
message that is not protobuf is a clear ``INVALID_ARGUMENT``, and no exception's text (which could
name the schema) reaches a client that has not authenticated. All database work of the sessions
goes through one :class:`~winstar_core.transport.fair.FairExecutor`, shared fairly across tenants.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import secrets
import socket
import uuid
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from winstar_core import metrics
from winstar_core.node import Node
from winstar_core.services.cloud import CloudService, check_secret, hash_secret, well_formed_secret
from winstar_core.services.common import parse_uuid
from winstar_core.services.instances import admit_instance, uplink_mark_stream_for
from winstar_core.services.nodes import (
    NODE_HEARTBEAT_S,
    NOTIFY_CHANNEL_SESSION,
    Beat,
    claim_edge,
    forget_node,
    heartbeat,
    pending_edges,
    register_node,
    release_edge,
)
from winstar_core.store.models import PENDING, CloudNode, Edge, EdgeEvent, StreamCounter, StreamMark
from winstar_core.store.outbox import (
    NOTIFY_CHANNEL_DOWNLINK,
    MarkOutOfReach,
    downlink_stream,
    move_past,
    uplink_mark_stream,
)
from winstar_core.store.rows import write_queued
from winstar_core.transport.batched import DownlinkAccess
from winstar_core.transport.common import SERVER_OPTIONS, listen
from winstar_core.transport.fair import FairExecutor
from winstar_core.transport.holding import Capabilities, capabilities, release_held
from winstar_core.transport.limits import (
    HELLO_MAX_BYTES,
    HELLO_TIMEOUT_S,
    MAX_ANNOUNCED_TYPES,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    METADATA_ADMITTED,
    METADATA_ROUTING_KEY,
    METADATA_SECRET,
    MIN_PEER_MESSAGE_BYTES,
    SERVICE_NAME,
)
from winstar_core.transport.link import (
    DrainProgress,
    OutboxStream,
    ProtocolViolation,
    Receiver,
    Sender,
    check_batch,
    clean_text,
    decode,
    is_infrastructure,
)
from winstar_core.transport.logsummary import LogSummary
from winstar_core.transport.pb import sync_pb2 as pb
from winstar_core.transport.throttle import KEY_PAUSE_CAP_S, MAX_KEY_WAITERS, AuthThrottle
from winstar_core.transport.welcome import PROTOCOL_VERSION, edge_welcome

log = logging.getLogger(__name__)
warnings = LogSummary(log)
_DUMMY_SALT = secrets.token_bytes(16)
_DUMMY_SECRET = secrets.token_urlsafe(24)
#: routing keys are UUIDs; anything else is not looked up (and costs the same scrypt work)
_ROUTING_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the executor lane of authentications: one more "tenant" in the fair rotation
_AUTH_LANE = "auth"
#: the lane of the node's own work (its poll, its heartbeat)
_NODE_LANE = "node"
#: a session's sender never polls its outbox by itself: the node wakes it (NOTIFY, or the node's
#: one poll of all its sessions), so an idle session costs no query and no timer
SESSION_POLL_S: float | None = None
#: listen addresses that name no one machine: a node's default name uses the host name instead
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")


class LinkClosed(Exception):
    pass


class Refusal(Exception):
    """A connection the cloud will not serve: its status code and the one line the client sees."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class PeerEnded(Exception):
    """The edge said why it ends the session (an Error message)."""


def peer_host(peer: str) -> str:
    """The address of ``context.peer()`` without its port: ``ipv4:10.0.0.7:51234`` → ``10.0.0.7``."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return peer


def _line(exc: BaseException) -> str:
    """One line about an error, for an authenticated edge: the driver's message, never the SQL."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return clean_text(text.splitlines()[0] if text else type(exc).__name__, 300)


def check_hello(hello: pb.Hello) -> None:
    """What a Hello announces must be sane before the cloud acts on it."""
    if hello.protocol_version != PROTOCOL_VERSION:
        raise Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"protocol version {hello.protocol_version} not supported (cloud speaks {PROTOCOL_VERSION})",
        )
    if hello.max_message_bytes and hello.max_message_bytes < MIN_PEER_MESSAGE_BYTES:
        raise Refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"max_message_bytes {hello.max_message_bytes:,} is below the {MIN_PEER_MESSAGE_BYTES:,}"
            " an edge must accept (an entity's data must fit in one message)",
        )
    if hello.applied_downlink_seq > MAX_SEQ:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"applied_downlink_seq is outside 0..{MAX_SEQ}")
    if len(hello.entity_types) > MAX_ANNOUNCED_TYPES:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"more than {MAX_ANNOUNCED_TYPES} entity types")
    if parse_uuid(hello.instance_id) is None:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the Hello names no valid instance id (a UUID)")


def _write_queued_rows(cloud: CloudService) -> None:
    """The end of a batch's optimistic pass: the rows it queued, one statement per table."""
    write_queued(cloud.session)


def uplink_receiver(node: Node, edge_id: uuid.UUID, instance_id: str | None = None) -> Receiver:
    """How the cloud applies one edge's stream (that edge database's: ``instance_id``; None for
    the mark an edge had before instances): batch look-ups first, the edge's row read once."""

    def edge_of(cloud: CloudService) -> Edge:
        edge = cloud.held(Edge, edge_id)
        if edge is None:
            raise LinkClosed("the edge was deleted")
        return edge

    stream = uplink_mark_stream_for(edge_id, instance_id) if instance_id else uplink_mark_stream(edge_id)
    return Receiver(
        node.db,
        stream,
        lambda s: CloudService(s, node.platform),
        lambda cloud, event: cloud.apply_uplink(edge_of(cloud), event),
        prepare=lambda cloud, events: cloud.prefetch(edge_of(cloud), events),
        finish=_write_queued_rows,
    )


T = TypeVar("T")


class EdgeSession:
    """One connected edge: sends its downlinks, applies its uplinks."""

    def __init__(
        self, server: CloudServer, edge_id: uuid.UUID, tenant_id: uuid.UUID, hello: pb.Hello, host: str
    ) -> None:
        self.server = server
        self.node = server.node
        self.edge_id = edge_id
        self.tenant_id = tenant_id
        self.hello = hello
        self.host = host
        # room for the batches in flight and a few acks: an edge that stops reading holds up its
        # own session, not the cloud's memory
        self.out: asyncio.Queue[pb.CloudMessage] = asyncio.Queue(maxsize=server.max_in_flight + 4)
        self.closed = asyncio.Event()
        #: set once the session has ended and recorded it
        self.ended = asyncio.Event()
        #: the edge moved to this box (reset-instance): a full sync is due
        self.moved = False
        #: (self.session_id: this session's id in the edge row while it owns the edge, see
        #: services/nodes.py; set before the sender, which holds events only while it owns it)
        #: why the session ends when it is closed from outside (``closed`` is set)
        self.end_reason = "closed"
        self.context: grpc.aio.ServicerContext | None = None
        limit = min(hello.max_message_bytes or MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES)
        self.session_id = uuid.uuid4()
        self.sender = Sender(
            OutboxStream(self.node.db, edge_id, owner=self.session_id),
            self._send_downlinks,
            batch_size=server.batch_size,
            max_in_flight=server.max_in_flight,
            poll_interval=SESSION_POLL_S,
            max_bytes=limit // 2,
            peer_limit=limit,
            offload=self.offload,
            access=server.downlink_access(tenant_id),
            progress=DrainProgress(f"downlinks to edge {edge_id}"),
            caps=self._capabilities(),
        )
        self.receiver = uplink_receiver(self.node, edge_id, hello.instance_id or None)

    def _capabilities(self) -> Capabilities | None:
        """What the edge reads: the types and schema versions its Hello announced (None: it
        announced none, and is sent everything)."""
        return capabilities(self.hello.entity_types, self.node.platform.types, "the edge")

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """This session's database work, in its tenant's turn."""
        return await self.server.executor.run(self.tenant_id, self.edge_id, fn, *args)

    async def _send_downlinks(self, events: list[pb.Event], last_seq: int) -> None:
        await self.out.put(pb.CloudMessage(downlinks=pb.EventBatch(events=events, last_seq=last_seq)))

    def wake(self) -> None:
        self.sender.wake()

    def end(self, reason: str) -> None:
        """Close this session from outside (another session took the edge, the node stops)."""
        self.end_reason = reason
        self.closed.set()

    # -- lifecycle ----------------------------------------------------------------------------------

    def admit(self) -> Refusal | None:
        """Whether the cloud serves this box as the edge (see :func:`admit_instance`); a refusal
        commits the conflict line."""
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            if edge is None:
                return Refusal(grpc.StatusCode.FAILED_PRECONDITION, "the edge was deleted")
            admission = admit_instance(cloud.session, edge, self.hello.instance_id, self.host)
            if not admission.ok:
                return Refusal(grpc.StatusCode.FAILED_PRECONDITION, admission.reason)
            self.moved = admission.full_sync
        return None

    def _on_connect(self) -> pb.Welcome | Refusal:
        """Mark the admitted edge connected: the Welcome, or why it is refused."""
        delivered = OutboxStream(self.node.db, self.edge_id).highest_delivered()
        with self.node.cloud() as cloud:
            # locked: two nodes claiming the edge at once take it one after the other
            edge = cloud.session.get(Edge, self.edge_id, with_for_update=True)
            if edge is None:
                return Refusal(grpc.StatusCode.FAILED_PRECONDITION, "the edge was deleted")
            behind = self._catch_up(cloud)
            if isinstance(behind, Refusal):
                return behind
            caps = self._capabilities()
            released = release_held(cloud.session, EdgeEvent, caps, self.edge_id)
            if released:
                log.info("edge %s now reads %d held downlink(s): sending them", self.edge_id, released)
            row = cloud.session.get(StreamMark, self.receiver.stream)
            mark = row.applied_seq if row is not None else 0
            self.sender.progress.what = f"downlinks to edge {edge.name!r}"
            before = claim_edge(cloud.session, edge, self.server.node_id, self.session_id)
            if before is not None:
                log.info("edge %s: taken over from node %s (the newest connection wins)", edge.name, before)
            welcome = edge_welcome(cloud, edge, applied_uplink_seq=mark)
            if self.moved or behind or self.hello.applied_downlink_seq < delivered:
                # moved to a new box, the edge lost what it had (restored backup), or it holds
                # what this database forgot (the cloud's was restored): a full sync is due
                edge.sync_requested = True
            if cloud.sync_if_due(edge):
                metrics.sync_run()
        return welcome

    def _catch_up(self, cloud: CloudService) -> bool | Refusal:
        """The edge applied this stream beyond anything this database wrote (the cloud's database
        was restored from a backup): move the pending downlinks past the edge's mark (see
        :func:`move_past`). Returns whether the stream was behind."""
        mark = self.hello.applied_downlink_seq
        try:
            counter = cloud.session.get(StreamCounter, downlink_stream(self.edge_id))
            if counter is None or mark <= counter.last_seq:
                return False
            moved = move_past(cloud.session, EdgeEvent, mark, self.edge_id)
        except MarkOutOfReach as exc:
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"applied_downlink_seq: {exc}")
        log.warning(
            "edge %s applied its downlinks up to seq %d, beyond what this database wrote (restored"
            " from a backup?): %d pending downlink(s) renumbered past it, full sync queued",
            self.edge_id,
            mark,
            moved,
        )
        return True

    def _sync_tick(self) -> bool:
        """Run the edge's requested Sync Edge if it is due and this session still owns the edge."""
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            if edge is None:
                raise LinkClosed("the edge was deleted")
            if edge.session_id != self.session_id:
                return False
            return cloud.sync_if_due(edge)

    async def check_sync(self) -> None:
        """The node saw a Sync Edge requested for this edge: run it here, its serving node."""
        try:
            if await self.offload(self._sync_tick):
                metrics.sync_run()
                self.sender.wake()
        except LinkClosed as exc:
            self.end(str(exc))
        except Exception as exc:  # the database: the node's next tick asks again
            warnings.warning(f"sync:{self.edge_id}", f"edge {self.edge_id}: sync check failed: {_line(exc)}")

    def _still_owner(self) -> bool:
        with self.node.db.read() as conn:
            owner = conn.scalar(sa.select(Edge.session_id).where(Edge.id == self.edge_id))
        return owner == self.session_id

    async def confirm_owner(self) -> None:
        """Another node says it took this edge over: end this session if the database agrees."""
        with suppress(Exception):
            if not await self.offload(self._still_owner):
                self.end("taken_over")

    def _on_disconnect(self, error: str | None) -> None:
        with self.node.db.begin() as s:
            release_edge(s, self.edge_id, self.session_id, error)

    async def connect(self) -> pb.Welcome:
        result = await self.offload(self._on_connect)
        if isinstance(result, Refusal):
            raise result
        return result

    async def run(self, context: grpc.aio.ServicerContext, welcome: pb.Welcome) -> None:
        self.context = context
        await context.write(pb.CloudMessage(welcome=welcome))
        metrics.session_started()
        tasks = [
            asyncio.create_task(self._writer(context), name="writer"),
            asyncio.create_task(self._reader(context), name="reader"),
            asyncio.create_task(self.sender.run(), name="sender"),
            asyncio.create_task(self.closed.wait(), name="closed"),
        ]
        error: str | None = None
        status: tuple[grpc.StatusCode, str] | None = None
        reason = "closed"
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self.closed.is_set() and self.end_reason == "taken_over":
                reason = "taken_over"
                error = "the edge connected again (to this or another node): this session ended"
                status = (grpc.StatusCode.ABORTED, "this edge connected again; this older session ends")
            elif self.closed.is_set() and self.end_reason == "node_stopping":
                reason = "node_stopping"
                status = (grpc.StatusCode.UNAVAILABLE, "this cloud node is stopping; connect again")
            for task in done:
                if task.cancelled() or task.exception() is None:
                    continue
                exc = task.exception()
                assert exc is not None
                if isinstance(exc, ProtocolViolation):
                    reason = "protocol_error"
                    error = f"protocol error: {exc}"
                    status = (grpc.StatusCode.INVALID_ARGUMENT, f"protocol error: {exc}")
                elif isinstance(exc, PeerEnded):
                    reason = "edge_ended"
                    error = str(exc)
                elif isinstance(exc, LinkClosed):
                    reason = "link_failed"
                    error = str(exc)
                    status = (grpc.StatusCode.UNAVAILABLE, str(exc))
                else:  # the details stay in our log: a database error can name hosts and users
                    reason = "link_failed"
                    if is_infrastructure(exc, self.node.db):
                        metrics.db_error()
                    error = f"{type(exc).__name__}: {_line(exc)}"
                    status = (
                        grpc.StatusCode.UNAVAILABLE,
                        f"cloud could not serve the link ({type(exc).__name__}); it is logged there",
                    )
                warnings.warning(
                    f"session:{self.edge_id}", f"edge {self.edge_id}: {task.get_name()}: {error}"
                )
        finally:
            metrics.session_ended(reason)
            for task in tasks:
                task.cancel()
            # gRPC may cancel this handler again while it cleans up (the RPC ends as the connection
            # dies): the edge must be marked disconnected all the same, so the cleanup is shielded.
            closing = asyncio.create_task(self._close(tasks, error))
            self.server.closing.add(closing)
            closing.add_done_callback(self.server.closing.discard)
            closing.add_done_callback(lambda _task: self.ended.set())
            await asyncio.shield(closing)
        if status is not None:
            await context.abort(*status)

    async def _close(self, tasks: list[asyncio.Task[Any]], error: str | None) -> None:
        await asyncio.wait(tasks, timeout=5)
        delay = 0.2
        for attempt in range(8):  # about half a minute; `winstar run` clears stale flags at start
            try:
                await asyncio.to_thread(self._on_disconnect, error)
                return
            except Exception as exc:  # the database is busy or restarting: the flag must still go down
                log.warning(
                    "edge %s: could not record the disconnect (%s), attempt %d",
                    self.edge_id,
                    _line(exc),
                    attempt + 1,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _writer(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            await context.write(await self.out.get())

    async def _reader(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            raw = await context.read()
            if raw is grpc.aio.EOF:
                return
            msg = decode(pb.EdgeMessage, raw, "a message from the edge")
            kind = msg.WhichOneof("msg")
            if kind == "uplinks":
                events = list(msg.uplinks.events)
                check_batch(events, msg.uplinks.last_seq)  # before any work is queued for it
                ack, touched = await self.offload(self.receiver.apply_batch, events, msg.uplinks.last_seq)
                await self.out.put(pb.CloudMessage(uplink_ack=ack))
                self.server.wake(touched)
            elif kind == "downlink_ack":
                await self.sender.on_ack(msg.downlink_ack)
            elif kind == "sync_request":
                await self.offload(self._request_sync)
                self.wake()
            elif kind == "error":
                raise PeerEnded(f"the edge ended the session: {clean_text(msg.error.reason, 300)}")
            else:
                raise ProtocolViolation(f"unexpected message: {kind or 'an empty one'}")

    def _request_sync(self) -> None:
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            if edge is None:
                raise LinkClosed("the edge was deleted")
            edge.sync_requested = True
            if cloud.sync_if_due(edge):
                metrics.sync_run()


class CloudServer:
    def __init__(
        self,
        node: Node,
        listen_addr: str = "127.0.0.1:7070",
        *,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        batch_size: int = 500,
        max_in_flight: int = 4,
        workers: int | None = None,
        node_name: str | None = None,
    ) -> None:
        self.node = node
        self.listen_addr = listen_addr
        #: this node's name (default: HOST:PORT it serves on) and its registration, once started
        self.node_name = node_name
        self.node_row: CloudNode | None = None
        self.tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        postgres = node.db.is_postgres
        # the node's own poll of its sessions' outboxes and sync requests; with LISTEN/NOTIFY it
        # is only a fallback
        self.poll_interval = 2.0 if postgres else 0.1
        self._node_task: asyncio.Task[None] | None = None
        self._session_listener: asyncio.Task[None] | None = None
        self.sessions: dict[uuid.UUID, EdgeSession] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.executor = FairExecutor(workers or max(4, 2 * (os.cpu_count() or 2)))
        self.throttle = AuthThrottle()
        #: per tenant: its sessions' downlink reads and acks, gathered (transport/batched.py)
        self._access: dict[uuid.UUID, DownlinkAccess] = {}
        #: per edge, while a connect of it is being admitted (gone with its last user)
        self._connecting: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()
        self._key_waiters: dict[str, int] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stop = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    def downlink_access(self, tenant_id: uuid.UUID) -> DownlinkAccess:
        """The gathered reads and acks of one tenant's sessions, run in that tenant's turn of the
        executor: a fan-out to a tenant's edges is a few transactions, and another tenant's work
        still gets its turn between them."""
        access = self._access.get(tenant_id)
        if access is None:

            async def offload(kind: str, fn: Callable[..., T], *args: Any) -> T:
                return await self.executor.run(tenant_id, ("gathered", kind), fn, *args)

            access = self._access[tenant_id] = DownlinkAccess(self.node.db, offload)
        return access

    # -- authentication ------------------------------------------------------------------------------

    def authenticate(self, routing_key: str, secret: str) -> tuple[uuid.UUID, uuid.UUID] | None:
        """(edge id, tenant id) if the secret is the edge's; None otherwise, after the same work."""
        row = None
        if _ROUTING_KEY.fullmatch(routing_key):
            with self.node.db.begin() as s:
                row = s.scalars(sa.select(Edge).where(Edge.routing_key == routing_key)).first()
                if row is not None and check_secret(row, secret):
                    return row.id, row.tenant_id
                if row is not None:
                    return None
        # same work as a real check (see check_secret): no timing oracle
        hash_secret(secret if well_formed_secret(secret) else _DUMMY_SECRET, _DUMMY_SALT)
        return None

    async def _authenticated(
        self, context: grpc.aio.ServicerContext, host: str
    ) -> tuple[uuid.UUID, uuid.UUID]:
        if not self.throttle.begin(host):
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, self.throttle.why_refused(host))
        try:
            return await self._check_credentials(context, host)
        finally:
            self.throttle.end(host)

    async def _check_credentials(
        self, context: grpc.aio.ServicerContext, host: str
    ) -> tuple[uuid.UUID, uuid.UUID]:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        routing_key = metadata.get(METADATA_ROUTING_KEY, "")
        secret = metadata.get(METADATA_SECRET, "")
        if not routing_key or not secret:
            self.throttle.failed(host, "")
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"no credentials: send the routing key and secret as the call's {METADATA_ROUTING_KEY}"
                f" and {METADATA_SECRET} metadata",
            )
        key = routing_key[:64]
        if self.throttle.pause_for(key) > 0:
            # this key's secret is being guessed: one check at a time, each after its pause
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = asyncio.Lock()
            waiting = self._key_waiters.get(key, 0)
            if waiting >= MAX_KEY_WAITERS:
                raise Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too many attempts for this edge: retry later"
                )
            self._key_waiters[key] = waiting + 1
            try:
                async with lock:
                    await asyncio.sleep(min(self.throttle.pause_for(key), KEY_PAUSE_CAP_S))
                    return await self._verify(host, key, routing_key, secret)
            finally:
                self._key_waiters[key] -= 1
                if not self._key_waiters[key]:
                    del self._key_waiters[key]
                    self._key_locks.pop(key, None)
        return await self._verify(host, key, routing_key, secret)

    async def _verify(
        self, host: str, key: str, routing_key: str, secret: str
    ) -> tuple[uuid.UUID, uuid.UUID]:
        found = await self.executor.run(_AUTH_LANE, key, self.authenticate, routing_key, secret)
        if found is None:
            self.throttle.failed(host, key)
            warnings.warning(
                f"auth:{host}", f"refused a connection from {host}: invalid routing key or secret"
            )
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "invalid routing key or secret")
        self.throttle.succeeded(host, key)
        return found

    async def _open(self, context: grpc.aio.ServicerContext) -> tuple[EdgeSession, pb.Welcome]:
        host = peer_host(context.peer() or "")
        edge_id, tenant_id = await self._authenticated(context, host)
        # tells the edge it got in: it sends its Hello then, so a refusal (above) never races
        # its write (which gRPC would report to it as INTERNAL instead of our status)
        await context.send_initial_metadata(((METADATA_ADMITTED, "1"),))
        try:
            raw = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, f"no Hello within {HELLO_TIMEOUT_S:.0f}s"
            ) from None
        if raw is grpc.aio.EOF:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before the Hello")
        if isinstance(raw, bytes) and len(raw) > HELLO_MAX_BYTES:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the Hello is {len(raw):,} bytes; at most {HELLO_MAX_BYTES:,}",
            )
        try:
            first = decode(pb.EdgeMessage, raw, "the first message")
        except ProtocolViolation as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if first.WhichOneof("msg") != "hello":
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello")
        check_hello(first.hello)
        session = EdgeSession(self, edge_id, tenant_id, first.hello, host)
        refusal = await session.offload(session.admit)
        if refusal is not None:
            raise refusal
        # one connect of an edge at a time on this node: the session that claims the edge last in
        # the database is the one this node keeps (two at once could otherwise leave the node
        # keeping the older one until its heartbeat noticed)
        lock = self._connecting.get(edge_id)
        if lock is None:
            lock = self._connecting[edge_id] = asyncio.Lock()
        async with lock:
            old = self.sessions.get(edge_id)
            if old is not None:  # the box reconnected before its old stream was noticed dead: end
                old.closed.set()  # that one first, so it acknowledges nothing meant for this one
                with suppress(TimeoutError):
                    await asyncio.wait_for(old.ended.wait(), timeout=10)
            welcome = await session.connect()
            self.sessions[edge_id] = session
        return session, welcome

    async def connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """The ``Connect`` RPC."""
        try:
            session, welcome = await self._open(context)
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.reason)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # the database is down...: one line in our log, nothing to the client
            warnings.warning(
                "connect", f"a connection could not be served: {type(exc).__name__}: {_line(exc)}"
            )
            code = grpc.StatusCode.UNAVAILABLE if is_infrastructure(exc) else grpc.StatusCode.INTERNAL
            await context.abort(code, "the cloud cannot accept the connection now; try again later")
        edge_id = session.edge_id
        try:
            await session.run(context, welcome)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # the database went away...: the edge reconnects and resumes
            warnings.warning(
                f"session:{edge_id}", f"edge {edge_id}: link failed: {type(exc).__name__}: {_line(exc)}"
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cloud error ({type(exc).__name__}); it is logged there"
            )
        finally:
            if self.sessions.get(edge_id) is session:
                del self.sessions[edge_id]

    # -- wake-ups -------------------------------------------------------------------------------------

    def wake(self, edge_ids: Any) -> None:
        if edge_ids == "*" or edge_ids is None:
            targets = list(self.sessions.values())
        else:
            targets = [s for e in edge_ids if (s := self.sessions.get(e)) is not None]
        for session in targets:
            session.wake()

    @property
    def node_id(self) -> uuid.UUID:
        assert self.node_row is not None, "the server is not started"
        return self.node_row.id

    def _on_session_note(self, payload: str) -> None:
        """Another node took over an edge (``EDGE_ID:SESSION_ID``): a session of ours for that
        edge with another id checks the database and ends if it no longer owns the edge."""
        edge_part, _, session_part = payload.partition(":")
        edge_id, session_id = parse_uuid(edge_part), parse_uuid(session_part)
        session = self.sessions.get(edge_id) if edge_id is not None else None
        if session is not None and session.session_id != session_id:
            task = asyncio.get_running_loop().create_task(session.confirm_owner())
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)

    def metrics_snapshot(self) -> metrics.CloudGauges:
        """Connected edges and pending downlinks per edge, for a metrics scrape (its own thread)."""
        sessions = list(self.sessions.values())
        ids = [s.edge_id for s in sessions]
        pending: dict[str, int] = {}
        if ids:
            with self.node.db.read() as conn:
                names = dict(conn.execute(sa.select(Edge.id, Edge.name).where(Edge.id.in_(ids))).all())
                counts = dict(
                    conn.execute(
                        sa.select(EdgeEvent.edge_id, sa.func.count())
                        .where(EdgeEvent.status == PENDING, EdgeEvent.edge_id.in_(ids))
                        .group_by(EdgeEvent.edge_id)
                    ).all()
                )
            taken = collections.Counter(names.get(i, str(i)) for i in ids)  # one pass, not one per edge
            for edge_id in ids:
                name = names.get(edge_id, str(edge_id))
                label = name if taken[name] == 1 else f"{name} ({str(edge_id)[:8]})"
                pending[label] = int(counts.get(edge_id, 0))
        return metrics.CloudGauges(connected_edges=len(sessions), pending=pending)

    # -- the node: registration, heartbeat, and the one loop that watches every session -------------

    def _register(self) -> CloudNode:
        host = self.listen_addr.rsplit(":", 1)[0]
        if host.strip("[]") in WILDCARD_HOSTS:  # every machine's 0.0.0.0:7070 is its own
            host = socket.gethostname()
        address = f"{host}:{self.port}"
        with self.node.db.begin() as s:
            row = register_node(s, self.node_name or address, address)
            s.expunge(row)
        return row

    def _tick(self, edge_ids: list[uuid.UUID]) -> tuple[set[uuid.UUID], list[uuid.UUID]]:
        """The sessions with pending downlinks, and the edges of this node with a Sync Edge due."""
        with self.node.db.read() as conn:
            pending = pending_edges(conn, edge_ids) if edge_ids else set()
            due = list(
                conn.scalars(
                    sa.select(Edge.id).where(Edge.node_id == self.node_id, Edge.sync_requested.is_(True))
                )
            )
        return pending, due

    def _beat(self, owned: dict[uuid.UUID, uuid.UUID]) -> Beat:
        assert self.node_row is not None
        with self.node.db.begin() as s:
            return heartbeat(s, self.node_row, owned)

    async def _node_loop(self) -> None:
        """One loop per node, whatever the number of sessions: wakes the senders of sessions with
        pending events (the fallback to NOTIFY), runs requested syncs on the serving session,
        ends sessions whose call is gone or whose edge another session took, and beats."""
        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        while not self._stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.poll_interval)
            if self._stop.is_set():
                return
            sessions = dict(self.sessions)
            for session in sessions.values():
                if session.context is not None and session.context.done():
                    session.end("closed")  # the RPC ended without its handler hearing of it
            try:
                pending, due = await self.executor.run(_NODE_LANE, "tick", self._tick, list(sessions))
                for edge_id in pending:
                    if (woken := sessions.get(edge_id)) is not None:
                        woken.sender.wake()
                for edge_id in due:
                    if (syncing := sessions.get(edge_id)) is not None:
                        self._spawn(syncing.check_sync())
                if loop.time() - last_beat >= NODE_HEARTBEAT_S:
                    last_beat = loop.time()
                    owned = {e: s.session_id for e, s in sessions.items()}
                    # on a thread of its own: a node busy with its tenants' work still beats
                    beat = await asyncio.to_thread(self._beat, owned)
                    self.node_name = self.node_row.name if self.node_row is not None else self.node_name
                    for edge_id in beat.lost:
                        if (lost := sessions.get(edge_id)) is not None:
                            lost.end("taken_over")
            except Exception as exc:  # the database is away: the sessions notice on their own
                if is_infrastructure(exc, self.node.db):
                    metrics.db_error()
                warnings.warning("node-loop", f"node {self.node_name}: {type(exc).__name__}: {_line(exc)}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def _leave(self) -> None:
        if self.node_row is not None:
            with self.node.db.begin() as s:
                forget_node(s, self.node_row.id)

    def _on_notify(self, payload: str) -> None:
        if payload == "*" or not payload:
            self.wake("*")
            return
        ids = []
        for part in payload.split(","):
            with suppress(ValueError):
                if part.startswith("sync:"):  # a Sync Edge asked (cloud_edges.request_sync): run it now
                    if (syncing := self.sessions.get(uuid.UUID(part[5:]))) is not None:
                        self._spawn(syncing.check_sync())
                    continue
                ids.append(uuid.UUID(part))
        self.wake(ids)

    # -- start and stop -------------------------------------------------------------------------------

    async def start(self) -> int:
        self.node.require("cloud", "winstar run (serving edges)")
        # nothing here touches the edges: other nodes may be serving them (services/nodes.py)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        # requests arrive as bytes and are decoded by the session (see decode): gRPC's own
        # decoding would answer garbage with UNKNOWN and a traceback in our log
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self.connect,
                    request_deserializer=None,
                    response_serializer=pb.CloudMessage.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.tls:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            self.port = server.add_secure_port(self.listen_addr, creds)
        else:
            self.port = server.add_insecure_port(self.listen_addr)
        self.node_row = await asyncio.to_thread(self._register)  # before a session can claim an edge
        self.node_name = self.node_row.name
        await server.start()
        self._server = server
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.node.db.is_postgres:
            self._listener = asyncio.create_task(
                listen(self.node.db, NOTIFY_CHANNEL_DOWNLINK, self._on_notify, self._stop)
            )
            self._session_listener = asyncio.create_task(
                listen(self.node.db, NOTIFY_CHANNEL_SESSION, self._on_session_note, self._stop)
            )
        self._node_task = asyncio.create_task(self._node_loop(), name="node")
        log.info("cloud node %r serving edges on %s (port %s)", self.node_name, self.listen_addr, self.port)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        await self._health.enter_graceful_shutdown()
        for session in list(self.sessions.values()):
            session.end("node_stopping")
        if self._server is not None:
            await self._server.stop(grace)
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=grace + 5)
        for task in (self._listener, self._session_listener, self._node_task):
            if task is not None:
                task.cancel()
                with suppress(BaseException):
                    await task
        try:  # the node leaves: its registration, and its claim on the edges it still had
            await asyncio.to_thread(self._leave)
        except Exception as exc:  # the database is away: the registration expires by itself
            log.warning("could not remove this node's registration (%s); it expires", _line(exc))
        self.executor.shutdown()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
