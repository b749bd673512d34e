"""The cloud's gRPC server: one bidirectional stream per connected edge."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from contextlib import suppress
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from winstar_core.node import Node
from winstar_core.services.cloud import CloudService, check_secret, hash_secret
from winstar_core.store.models import Edge, now_ms
from winstar_core.store.outbox import NOTIFY_CHANNEL_DOWNLINK, uplink_mark_stream
from winstar_core.transport.common import SERVER_OPTIONS, listen
from winstar_core.transport.link import MAX_MESSAGE_BYTES, DrainProgress, OutboxStream, Receiver, Sender
from winstar_core.transport.pb import sync_pb2 as pb
from winstar_core.transport.pb import sync_pb2_grpc as pb_grpc
from winstar_core.transport.welcome import PROTOCOL_VERSION, edge_welcome

log = logging.getLogger(__name__)
SERVICE_NAME = "winstar.edge.v1.EdgeSync"
_DUMMY_SALT = secrets.token_bytes(16)


class LinkClosed(Exception):
    pass


def _line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else ""


def uplink_receiver(node: Node, edge_id: uuid.UUID) -> Receiver:
    """How the cloud applies one edge's stream: batch look-ups first, the edge's row read once."""

    def edge_of(cloud: CloudService) -> Edge:
        edge = cloud.held(Edge, edge_id)
        if edge is None:
            raise LinkClosed("the edge was deleted")
        return edge

    return Receiver(
        node.db,
        uplink_mark_stream(edge_id),
        lambda s: CloudService(s, node.platform),
        lambda cloud, event: cloud.apply_uplink(edge_of(cloud), event),
        prepare=lambda cloud, events: cloud.prefetch(edge_of(cloud), events),
    )


class EdgeSession:
    """One connected edge: sends its downlinks, applies its uplinks."""

    def __init__(self, server: CloudServer, edge_id: uuid.UUID, hello: pb.Hello) -> None:
        self.server = server
        self.node = server.node
        self.edge_id = edge_id
        self.hello = hello
        self.out: asyncio.Queue[pb.CloudMessage] = asyncio.Queue(maxsize=64)
        self.closed = asyncio.Event()
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
            progress=DrainProgress(f"downlinks to edge {edge_id}"),
        )
        self.receiver = uplink_receiver(self.node, edge_id)

    async def _send_downlinks(self, events: list[pb.Event]) -> None:
        await self.out.put(pb.CloudMessage(downlinks=pb.EventBatch(events=events)))

    def wake(self) -> None:
        self.sender.wake()
        self.poke.set()

    # -- lifecycle ----------------------------------------------------------------------------------

    def _on_connect(self) -> pb.Welcome:
        mark = self.receiver.mark()
        delivered = OutboxStream(self.node.db, self.edge_id).highest_delivered()
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            assert edge is not None
            self.sender.progress.what = f"downlinks to edge {edge.name!r}"
            edge.connected = True
            edge.last_seen = now_ms()
            edge.last_error = None
            welcome = edge_welcome(cloud, edge, applied_uplink_seq=mark)
            if edge.sync_requested or self.hello.applied_downlink_seq < delivered:
                # asked for, or the edge lost what it had (new disk, restored backup): full sync
                cloud.run_sync(edge)
        return welcome

    def _housekeeping_tick(self, touch: bool) -> bool:
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            if edge is None:
                raise LinkClosed("the edge was deleted")
            if touch:
                edge.last_seen = now_ms()
            if edge.sync_requested:
                cloud.run_sync(edge)
                return True
        return False

    def _on_disconnect(self, error: str | None) -> None:
        with self.node.db.begin() as s:
            edge = s.get(Edge, self.edge_id)
            if edge is not None and self.server.sessions.get(self.edge_id) in (None, self):
                edge.connected = False
                edge.last_seen = now_ms()
                edge.last_error = error

    async def run(self, context: grpc.aio.ServicerContext) -> None:
        welcome = await asyncio.to_thread(self._on_connect)
        await context.write(pb.CloudMessage(welcome=welcome))
        tasks = [
            asyncio.create_task(self._writer(context), name="writer"),
            asyncio.create_task(self._reader(context), name="reader"),
            asyncio.create_task(self.sender.run(), name="sender"),
            asyncio.create_task(self._housekeeping(context), name="housekeeping"),
            asyncio.create_task(self.closed.wait(), name="closed"),
        ]
        error: str | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("edge %s: %s failed: %s", self.edge_id, task.get_name(), error)
        finally:
            for task in tasks:
                task.cancel()
            # gRPC may cancel this handler again while it cleans up (the RPC ends as the connection
            # dies): the edge must be marked disconnected all the same, so the cleanup is shielded.
            closing = asyncio.create_task(self._close(tasks, error))
            self.server.closing.add(closing)
            closing.add_done_callback(self.server.closing.discard)
            await asyncio.shield(closing)
        if error is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cloud could not serve the link: {error}")

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
                    exc,
                    attempt + 1,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _writer(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            await context.write(await self.out.get())

    async def _reader(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("msg")
            if kind == "uplinks":
                ack, touched = await asyncio.to_thread(self.receiver.apply_batch, list(msg.uplinks.events))
                await self.out.put(pb.CloudMessage(uplink_ack=ack))
                self.server.wake(touched)
            elif kind == "downlink_ack":
                await self.sender.on_ack(msg.downlink_ack)
            elif kind == "sync_request":
                await asyncio.to_thread(self._request_sync)
                self.wake()
            else:
                await self.out.put(
                    pb.CloudMessage(
                        error=pb.Error(code="INVALID_ARGUMENT", reason=f"unexpected message {kind}")
                    )
                )

    def _request_sync(self) -> None:
        with self.node.cloud() as cloud:
            edge = cloud.session.get(Edge, self.edge_id)
            assert edge is not None
            cloud.run_sync(edge)

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
            if await asyncio.to_thread(self._housekeeping_tick, touch):
                self.sender.wake()
            if touch:
                last_touch = loop.time()


class _Servicer(pb_grpc.EdgeSyncServicer):
    def __init__(self, server: CloudServer) -> None:
        self.server = server

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello")
        hello = first.hello
        edge_id = await asyncio.to_thread(self.server.authenticate, hello.routing_key, hello.secret)
        if edge_id is None:
            # Same answer for an unknown key and a wrong secret; nothing else is read from this stream.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid routing key or secret")
        assert edge_id is not None
        if hello.protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {hello.protocol_version} not supported (cloud speaks {PROTOCOL_VERSION})",
            )
        session = EdgeSession(self.server, edge_id, hello)
        old = self.server.sessions.get(edge_id)
        if old is not None:  # the edge reconnected before the old stream was noticed dead
            old.closed.set()
        self.server.sessions[edge_id] = session
        try:
            await session.run(context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # the database went away...: the edge reconnects and resumes
            log.warning("edge %s: link failed: %s", edge_id, exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cloud error: {type(exc).__name__}: {_line(exc)}"
            )
        finally:
            if self.server.sessions.get(edge_id) is session:
                del self.server.sessions[edge_id]


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
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stop = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    def authenticate(self, routing_key: str, secret: str) -> uuid.UUID | None:
        with self.node.db.begin() as s:
            edge = s.scalars(sa.select(Edge).where(Edge.routing_key == routing_key)).first()
            if edge is None:
                hash_secret(secret, _DUMMY_SALT)  # same work as a real check: no timing oracle
                return None
            return edge.id if check_secret(edge, secret) else None

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

    async def start(self) -> int:
        self.node.require("cloud", "winstar run (serving edges)")
        with self.node.db.begin() as s:  # a previous process may have died with edges marked connected
            s.execute(sa.update(Edge).where(Edge.connected.is_(True)).values(connected=False))
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_EdgeSyncServicer_to_server(_Servicer(self), server)
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

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
