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
import logging
import os
import re
import secrets
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from winstar_core.node import Node
from winstar_core.services.cloud import CloudService, check_secret, hash_secret, well_formed_secret
from winstar_core.services.common import parse_uuid
from winstar_core.services.instances import admit_instance, uplink_mark_stream_for
from winstar_core.store.models import Edge, EdgeEvent, StreamCounter, StreamMark, now_ms
from winstar_core.store.outbox import (
    NOTIFY_CHANNEL_DOWNLINK,
    MarkOutOfReach,
    downlink_stream,
    move_past,
    uplink_mark_stream,
)
from winstar_core.transport.common import SERVER_OPTIONS, listen
from winstar_core.transport.fair import FairExecutor
from winstar_core.transport.holding import Capabilities, capabilities, release_held
from winstar_core.transport.limits import (
    HELLO_MAX_BYTES,
    HELLO_TIMEOUT_S,
    MAX_ANNOUNCED_TYPES,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
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
        self.poke = asyncio.Event()
        limit = min(hello.max_message_bytes or MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES)
        self.sender = Sender(
            OutboxStream(self.node.db, edge_id),
            self._send_downlinks,
            batch_size=server.batch_size,
            max_in_flight=server.max_in_flight,
            poll_interval=server.poll_interval,
            max_bytes=limit // 2,
            peer_limit=limit,
            offload=self.offload,
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
        self.poke.set()

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
            edge = cloud.session.get(Edge, self.edge_id)
            if edge is None:
                return Refusal(grpc.StatusCode.FAILED_PRECONDITION, "the edge was deleted")
            behind = self._catch_up(cloud)
            if isinstance(behind, Refusal):
                return behind
            caps = self._capabilities()
            released = release_held(cloud.session, EdgeEvent, caps, self.edge_id) if caps else 0
            if released:
                log.info("edge %s now reads %d held downlink(s): sending them", self.edge_id, released)
            row = cloud.session.get(StreamMark, self.receiver.stream)
            mark = row.applied_seq if row is not None else 0
            self.sender.progress.what = f"downlinks to edge {edge.name!r}"
            edge.connected = True
            edge.last_seen = now_ms()
            edge.last_error = None
            welcome = edge_welcome(cloud, edge, applied_uplink_seq=mark)
            if self.moved or behind or self.hello.applied_downlink_seq < delivered:
                # moved to a new box, the edge lost what it had (restored backup), or it holds
                # what this database forgot (the cloud's was restored): a full sync is due
                edge.sync_requested = True
            cloud.sync_if_due(edge)
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

    def _housekeeping_tick(self, touch: bool) -> bool:
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            if edge is None:
                raise LinkClosed("the edge was deleted")
            if touch:
                edge.last_seen = now_ms()
                edge.connected = True  # a replaced session's cleanup may have cleared it meanwhile
            return cloud.sync_if_due(edge)

    def _on_disconnect(self, error: str | None) -> None:
        with self.node.db.begin() as s:
            edge = s.get(Edge, self.edge_id)
            if edge is not None and self.server.sessions.get(self.edge_id) in (None, self):
                edge.connected = False
                edge.last_seen = now_ms()
                edge.last_error = error

    async def connect(self) -> pb.Welcome:
        result = await self.offload(self._on_connect)
        if isinstance(result, Refusal):
            raise result
        return result

    async def run(self, context: grpc.aio.ServicerContext, welcome: pb.Welcome) -> None:
        await context.write(pb.CloudMessage(welcome=welcome))
        tasks = [
            asyncio.create_task(self._writer(context), name="writer"),
            asyncio.create_task(self._reader(context), name="reader"),
            asyncio.create_task(self.sender.run(), name="sender"),
            asyncio.create_task(self._housekeeping(context), name="housekeeping"),
            asyncio.create_task(self.closed.wait(), name="closed"),
        ]
        error: str | None = None
        status: tuple[grpc.StatusCode, str] | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled() or task.exception() is None:
                    continue
                exc = task.exception()
                assert exc is not None
                if isinstance(exc, ProtocolViolation):
                    error = f"protocol error: {exc}"
                    status = (grpc.StatusCode.INVALID_ARGUMENT, f"protocol error: {exc}")
                elif isinstance(exc, PeerEnded):
                    error = str(exc)
                elif isinstance(exc, LinkClosed):
                    error = str(exc)
                    status = (grpc.StatusCode.UNAVAILABLE, str(exc))
                else:  # the details stay in our log: a database error can name hosts and users
                    error = f"{type(exc).__name__}: {_line(exc)}"
                    status = (
                        grpc.StatusCode.UNAVAILABLE,
                        f"cloud could not serve the link ({type(exc).__name__}); it is logged there",
                    )
                warnings.warning(
                    f"session:{self.edge_id}", f"edge {self.edge_id}: {task.get_name()}: {error}"
                )
        finally:
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
            cloud.sync_if_due(edge)

    async def _housekeeping(self, context: grpc.aio.ServicerContext) -> None:
        last_touch = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.poke.wait(), timeout=self.server.housekeeping_interval)
            self.poke.clear()
            if context.done():  # belt and braces: the RPC ended without this handler hearing of it
                raise LinkClosed("the connection to the edge is gone")
            touch = loop.time() - last_touch >= 5.0
            if await self.offload(self._housekeeping_tick, touch):
                self.sender.wake()
            if touch:
                last_touch = loop.time()


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
    ) -> None:
        self.node = node
        self.listen_addr = listen_addr
        self.tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        postgres = node.db.is_postgres
        # with LISTEN/NOTIFY the polls are only a fallback
        self.poll_interval = 2.0 if postgres else 0.1
        self.housekeeping_interval = 5.0 if postgres else 1.0
        self.sessions: dict[uuid.UUID, EdgeSession] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.executor = FairExecutor(workers or max(4, 2 * (os.cpu_count() or 2)))
        self.throttle = AuthThrottle()
        self._key_waiters: dict[str, int] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stop = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

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
            wait = max(self.throttle.refused_for(host), 1.0)
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed attempts from this address: retry in {wait:.0f}s",
            )
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
        old = self.sessions.get(edge_id)
        if old is not None:  # the box reconnected before its old stream was noticed dead: end
            old.closed.set()  # that one first, so it acknowledges nothing meant for this one
            with suppress(TimeoutError):
                await asyncio.wait_for(old.ended.wait(), timeout=10)
        return session, await session.connect()

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
        old = self.sessions.get(edge_id)
        if old is not None:  # another connect of this box won the race meanwhile
            old.closed.set()
        self.sessions[edge_id] = session
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

    def _on_notify(self, payload: str) -> None:
        if payload == "*" or not payload:
            self.wake("*")
            return
        ids = []
        for part in payload.split(","):
            with suppress(ValueError):
                ids.append(uuid.UUID(part))
        self.wake(ids)

    # -- start and stop -------------------------------------------------------------------------------

    async def start(self) -> int:
        self.node.require("cloud", "winstar run (serving edges)")
        with self.node.db.begin() as s:  # a previous process may have died with edges marked connected
            s.execute(sa.update(Edge).where(Edge.connected.is_(True)).values(connected=False))
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
        await server.start()
        self._server = server
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.node.db.is_postgres:
            self._listener = asyncio.create_task(
                listen(self.node.db, NOTIFY_CHANNEL_DOWNLINK, self._on_notify, self._stop)
            )
        log.info("cloud serving edges on %s (port %s)", self.listen_addr, self.port)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        await self._health.enter_graceful_shutdown()
        for session in list(self.sessions.values()):
            session.closed.set()
        if self._server is not None:
            await self._server.stop(grace)
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=grace + 5)
        if self._listener is not None:
            self._listener.cancel()
            with suppress(BaseException):
                await self._listener
        self.executor.shutdown()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
