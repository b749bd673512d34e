"""The edge's side of the link: connect, sync, reconnect forever.

The edge holds the cloud to the protocol as the cloud holds the edge: every message is decoded
here (garbage is a protocol error, not a crash), the Welcome's announcements are checked, a batch
and an ack must keep the rules of :mod:`winstar_core.transport.link`. A protocol error ends the
session with one line in the log and in ``winstar status``, an Error message telling the cloud why,
and a reconnect after the usual backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from contextlib import suppress
from typing import Any

import grpc

from winstar_core import metrics
from winstar_core.errors import WinstarError
from winstar_core.node import Node, check_addresses, read_secret
from winstar_core.services.common import SYNC_EVENT_TYPE, get_config, set_config
from winstar_core.services.edge import EdgeService
from winstar_core.store.models import CloudEvent, now_ms
from winstar_core.store.outbox import (
    DOWNLINK_MARK_STREAM,
    NOTIFY_CHANNEL_UPLINK,
    MarkOutOfReach,
    move_past,
)
from winstar_core.transport.common import CLIENT_OPTIONS, listen
from winstar_core.transport.holding import Capabilities, capabilities, release_held
from winstar_core.transport.limits import (
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
    reason,
)
from winstar_core.transport.pb import sync_pb2 as pb
from winstar_core.transport.welcome import PROTOCOL_VERSION

log = logging.getLogger(__name__)

#: status codes after which the edge tries again (with backoff); others are reported and also
#: retried, more slowly, since an operator may fix them (a secret, a certificate) while we wait
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
HEARTBEAT_S = 5.0
#: seconds the edge waits for the cloud to say it let it in before it sends its Hello anyway
AUTH_WAIT_S = 5.0
#: seconds the edge waits for a refusal's status after metadata that does not admit it
REFUSAL_WAIT_S = 1.0
#: refusals naming a wait that an edge takes from one node before it tries the next one
HINTED_PER_NODE = 2
#: the longest wait a refusal can impose on an edge
MAX_HINT_S = 60.0
WELCOME_TIMEOUT_S = 30.0
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0
BACKOFF_CAP_REFUSED_S = 60.0


class CloudError(Exception):
    """The cloud ended the link with an application error."""


def check_welcome(welcome: pb.Welcome) -> None:
    """What a Welcome announces must be sane before the edge acts on it."""
    if welcome.protocol_version != PROTOCOL_VERSION:
        raise ProtocolViolation(
            f"the cloud speaks protocol version {welcome.protocol_version}, this edge {PROTOCOL_VERSION}"
        )
    if welcome.max_message_bytes and welcome.max_message_bytes < MIN_PEER_MESSAGE_BYTES:
        raise ProtocolViolation(
            f"the cloud accepts messages of {welcome.max_message_bytes:,} bytes, below the"
            f" {MIN_PEER_MESSAGE_BYTES:,} every node must accept"
        )
    if welcome.applied_uplink_seq > MAX_SEQ:
        raise ProtocolViolation(f"the Welcome's applied_uplink_seq is outside 0..{MAX_SEQ}")
    if len(welcome.entity_types) > MAX_ANNOUNCED_TYPES:
        raise ProtocolViolation(f"the Welcome announces more than {MAX_ANNOUNCED_TYPES} entity types")


async def _closed(call: Any) -> CloudError:
    """Why the cloud ended the stream."""
    code = await call.code()
    details = await call.details()
    if code == grpc.StatusCode.OK:
        return CloudError("the cloud closed the link")
    return CloudError(f"{code.name}: {details}")


_RETRY_IN = re.compile(r"retry in (\d{1,4})s")


def retry_hint(details: str) -> float | None:
    """The seconds a refusal says to wait (``... retry in 3s``), within BACKOFF_START_S ..
    MAX_HINT_S / 2 (the wait is spread over as long again); None if it names none."""
    found = _RETRY_IN.search(details)
    if not found:
        return None
    return min(max(float(found.group(1)), BACKOFF_START_S), MAX_HINT_S / 2)


def next_delay(backoff: float, cap: float, hint: float | None, next_in_round: bool) -> tuple[float, float]:
    """The wait before the next attempt, and the backoff after it. ``hint``: what the cloud's
    refusal said to wait (then, spread over as long again). ``next_in_round``: the next attempt
    goes to another node of the list, which is tried at once (the last one may be gone): the
    backoff grows once per round of the list, not once per node. Otherwise a jittered exponential
    backoff, up to ``cap``."""
    if hint is not None:
        return random.uniform(hint, 2 * hint), backoff
    if next_in_round:
        return random.uniform(0, BACKOFF_START_S), backoff
    return random.uniform(backoff / 2, backoff), min(backoff * 2, cap)


def downlink_receiver(node: Node) -> Receiver:
    """How an edge applies the cloud's stream: batch look-ups first, new entities in bulk."""
    platform = node.platform
    return Receiver(
        node.db,
        DOWNLINK_MARK_STREAM,
        lambda s: EdgeService(s, platform),
        lambda svc, ev: svc.apply_downlink(ev),
        prepare=lambda svc, events: svc.prefetch(events),
        finish=lambda svc: svc.write_new(),
    )


class EdgeClient:
    def __init__(
        self,
        node: Node,
        cloud_addr: str | None = None,
        *,
        ca: bytes | None = None,
        batch_size: int = 500,
        max_in_flight: int = 4,
    ) -> None:
        node.require("edge", "winstar run (edge)")
        self.node = node
        with node.db.begin() as s:
            #: the cloud's nodes, tried in turn (``--cloud HOST:PORT[,HOST:PORT...]``)
            self.cloud_addrs = check_addresses(cloud_addr or get_config(s, "cloud") or "", "--cloud")
            self._addr = 0
            self.routing_key = get_config(s, "routing_key")
            self.secret_file = get_config(s, "secret_file")
            ca_file = get_config(s, "ca_file")
        if ca is None and ca_file:
            try:
                with open(ca_file, "rb") as fh:
                    ca = fh.read()
            except OSError as exc:
                raise WinstarError(f"cannot read the CA certificate {ca_file}: {exc.strerror}") from None
        self.ca = ca
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.poll_interval = 2.0 if node.db.is_postgres else 0.05
        self.connected = asyncio.Event()
        self.sessions = 0
        #: what the cloud of the current session reads (its Welcome's types and versions)
        self._caps: Capabilities | None = None
        self._sender: Sender | None = None

    @property
    def cloud_addr(self) -> str:
        """The cloud node address this client uses now (the next one after a failed session)."""
        return self.cloud_addrs[self._addr % len(self.cloud_addrs)]

    def pending_uplinks_count(self) -> int:
        """Uplinks not delivered yet (the metrics' scrape asks, from its own thread)."""
        return OutboxStream(self.node.db).pending()

    # -- state shown by `winstar status` -----------------------------------------------------------

    def _set_state(self, *, connected: bool, error: str | None) -> None:
        metrics.edge_connected(connected)
        with self.node.db.begin() as s:
            set_config(s, "connected", connected)
            set_config(s, "last_error", error)
            set_config(s, "link_heartbeat", now_ms())

    def _heartbeat(self) -> None:
        with self.node.db.begin() as s:
            set_config(s, "link_heartbeat", now_ms())

    # -- run ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        backoff = BACKOFF_START_S
        hinted = 0  # refusals in a row from the current node that said when to come back
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            error: str | None = None
            cap = BACKOFF_CAP_S
            hint: float | None = None
            try:
                await self._session(stop)
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {clean_text(exc.details() or '', 1000)}"
                if exc.code() not in RETRYABLE:
                    cap = BACKOFF_CAP_REFUSED_S
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    hint = retry_hint(exc.details() or "")
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    error += await asyncio.to_thread(self._undelivered)
            except CloudError as exc:
                error = str(exc)
            except ProtocolViolation as exc:
                error = f"protocol error from the cloud: {exc}"
                log.warning("%s", error)
                cap = BACKOFF_CAP_REFUSED_S
            except WinstarError as exc:
                error = str(exc)
                cap = BACKOFF_CAP_REFUSED_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or a bug: report, back off, try again
                log.exception("edge link failed")
                if is_infrastructure(exc, self.node.db):
                    metrics.db_error()
                error = f"{type(exc).__name__}: {exc}"
            self.connected.clear()
            # the next node: this one may be gone; but a node that said when to come back is up
            # and busy (a connect storm): back to it then, not to a node that may be dead, for
            # HINTED_PER_NODE refusals in a row (its throttle may be refusing the whole address
            # for someone else's failures: another node may take us)
            hinted = hinted + 1 if hint is not None else 0
            if len(self.cloud_addrs) > 1 and (hint is None or hinted > HINTED_PER_NODE):
                self._addr += 1
                hinted = 0
            with suppress(Exception):
                await asyncio.to_thread(self._set_state, connected=False, error=error)
            if stop.is_set():
                break
            if loop.time() - started > 30:
                backoff = BACKOFF_START_S  # the link was up for a while: start again from short waits
            delay, backoff = next_delay(
                backoff, cap, hint, next_in_round=self._addr % len(self.cloud_addrs) != 0
            )
            log.info("link down (%s); reconnecting in %.1fs", error, delay)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def _channel(self) -> grpc.aio.Channel:
        if self.ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca)
            return grpc.aio.secure_channel(self.cloud_addr, creds, options=CLIENT_OPTIONS)
        return grpc.aio.insecure_channel(self.cloud_addr, options=CLIENT_OPTIONS)

    def _undelivered(self) -> str:
        """For a refusal (another box is the edge...): what this box holds that did not go up."""
        n = self.pending_uplinks_count()
        return f" ({n:,} uplinks of this box not delivered: `winstar uplinks --status pending`)" if n else ""

    def _hello(self, receiver: Receiver) -> pb.Hello:
        types = self.node.platform.types
        return pb.Hello(
            instance_id=self.node.instance_id(),
            protocol_version=PROTOCOL_VERSION,
            entity_types=[
                pb.EntityTypeInfo(type=t.name, schema_version=t.schema_version, plugin=types.owner(t.name))
                for t in types
            ],
            max_message_bytes=MAX_MESSAGE_BYTES,
            applied_downlink_seq=receiver.mark(),
        )

    def _on_welcome(self, welcome: pb.Welcome) -> None:
        with self.node.edge() as edge:
            try:
                edge.apply_config(welcome.edge, welcome.users)
            except WinstarError as exc:
                raise ProtocolViolation(f"the Welcome's edge configuration: {exc}") from None
            except Exception as exc:
                if is_infrastructure(exc, self.node.db):
                    raise
                raise ProtocolViolation(f"the Welcome's edge configuration: {reason(exc)}") from None
            self._catch_up(edge, welcome.applied_uplink_seq)
            self._caps = self._capabilities(welcome)
            released = release_held(edge.session, CloudEvent, self._caps)
            if released:
                log.info("the cloud now reads %d held uplink(s): sending them", released)
            set_config(edge.session, "connected", True)
            set_config(edge.session, "last_error", None)
            set_config(edge.session, "link_heartbeat", now_ms())

    def _capabilities(self, welcome: pb.Welcome) -> Capabilities | None:
        """What the cloud reads: the types and schema versions its Welcome announced (None: it
        announced none, and is sent everything)."""
        return capabilities(welcome.entity_types, self.node.platform.types, "the cloud")

    @staticmethod
    def _catch_up(edge: EdgeService, cloud_mark: int) -> None:
        """The cloud applied this edge's uplinks beyond anything this database wrote (a restored
        backup): move the pending ones past its mark (see :func:`move_past`)."""
        try:
            moved = move_past(edge.session, CloudEvent, cloud_mark)
        except MarkOutOfReach as exc:
            raise ProtocolViolation(str(exc)) from None
        if moved:
            log.warning(
                "the cloud applied this edge's uplinks up to seq %d, beyond what this database wrote"
                " (restored from a backup?): %d pending uplink(s) renumbered past it",
                cloud_mark,
                moved,
            )

    async def _session(self, stop: asyncio.Event) -> None:
        receiver = downlink_receiver(self.node)
        hello = await asyncio.to_thread(self._hello, receiver)
        channel = self._channel()
        try:
            await self._stream(channel, receiver, hello, stop)
        finally:
            with suppress(Exception):
                await asyncio.wait_for(channel.close(), timeout=5)

    async def _stream(
        self, channel: grpc.aio.Channel, receiver: Receiver, hello: pb.Hello, stop: asyncio.Event
    ) -> None:
        # responses arrive as bytes and are decoded here (see decode); the credentials travel in
        # the call's metadata, so the cloud reads nothing of ours before it knows who we are
        connect = channel.stream_stream(
            f"/{SERVICE_NAME}/Connect",
            request_serializer=pb.EdgeMessage.SerializeToString,
            response_deserializer=None,
        )
        secret = await asyncio.to_thread(read_secret, self.secret_file)
        call = connect(metadata=((METADATA_ROUTING_KEY, self.routing_key), (METADATA_SECRET, secret)))
        # the cloud sends its initial metadata (winstar-admitted) once it let us in: the Hello
        # goes after it, so that a refusal reaches us with its own status and reason (a write
        # racing the refusal is reported by gRPC as INTERNAL, reason lost). Metadata without it
        # is a refusal on its way (its status follows at once) or a peer of another kind; no
        # answer within AUTH_WAIT_S, or no status within a second after such metadata: the Hello
        # goes anyway, and the Welcome's own timeout applies.
        with suppress(TimeoutError):
            first = await asyncio.wait_for(call.initial_metadata(), timeout=AUTH_WAIT_S)
            if not any(key == METADATA_ADMITTED for key, _ in (first or ())):
                await asyncio.wait_for(call.code(), timeout=REFUSAL_WAIT_S)
        if call.done():  # refused: the call ended with the cloud's status
            raise grpc.aio.AioRpcError(
                await call.code(),
                await call.initial_metadata(),
                await call.trailing_metadata(),
                await call.details(),
            )
        await call.write(pb.EdgeMessage(hello=hello))
        reading = asyncio.ensure_future(call.read())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {reading, stopping}, timeout=WELCOME_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if not reading.done():  # stopped, or no answer in time: a cloud that holds the call open
            reading.cancel()
            call.cancel()
            if stop.is_set():
                return
            raise CloudError("the cloud did not answer the hello in time")
        raw = reading.result()
        if raw is grpc.aio.EOF:
            raise await _closed(call)
        try:
            first = decode(pb.CloudMessage, raw, "the cloud's first message")
            if first.WhichOneof("msg") == "error":
                raise CloudError(f"{first.error.code}: {clean_text(first.error.reason, 500)}")
            if first.WhichOneof("msg") != "welcome":
                raise ProtocolViolation("the cloud's first message was not a Welcome")
            welcome = first.welcome
            check_welcome(welcome)
            await asyncio.to_thread(self._on_welcome, welcome)
        except ProtocolViolation as exc:
            await self._tell(call, exc)
            raise
        limit = min(welcome.max_message_bytes or MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES)
        out: asyncio.Queue[pb.EdgeMessage] = asyncio.Queue(maxsize=64)

        async def send_uplinks(events: list[pb.Event], last_seq: int) -> None:
            await out.put(pb.EdgeMessage(uplinks=pb.EventBatch(events=events, last_seq=last_seq)))

        sender = Sender(
            OutboxStream(self.node.db),
            send_uplinks,
            batch_size=self.batch_size,
            max_in_flight=self.max_in_flight,
            poll_interval=self.poll_interval,
            max_bytes=limit // 2,
            peer_limit=limit,
            progress=DrainProgress("uplinks to the cloud"),
            caps=self._caps,
        )
        self._sender = sender
        self.sessions += 1
        metrics.edge_reconnect()
        metrics.edge_connected(True)
        self.connected.set()
        log.info("connected to %s as edge %s", self.cloud_addr, welcome.edge.name)

        async def writer() -> None:
            while True:
                msg = await out.get()
                try:
                    await call.write(msg)
                except asyncio.InvalidStateError:  # the call has ended (the node went away): why
                    raise await _closed(call) from None

        async def reader() -> None:
            try:
                while True:
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        raise await _closed(call)
                    msg = decode(pb.CloudMessage, raw, "a message from the cloud")
                    kind = msg.WhichOneof("msg")
                    if kind == "downlinks":
                        events = list(msg.downlinks.events)
                        check_batch(events, msg.downlinks.last_seq)
                        ack, _ = await asyncio.to_thread(receiver.apply_batch, events, msg.downlinks.last_seq)
                        await out.put(pb.EdgeMessage(downlink_ack=ack))
                        if any(e.type == SYNC_EVENT_TYPE for e in events):
                            sender.wake()  # a digest's answer is waiting in the uplink stream
                    elif kind == "uplink_ack":
                        await sender.on_ack(msg.uplink_ack)
                        metrics.edge_ack(time.time())
                    elif kind == "error":
                        raise CloudError(f"{msg.error.code}: {clean_text(msg.error.reason, 500)}")
                    else:
                        raise ProtocolViolation(
                            f"unexpected message from the cloud: {kind or 'an empty one'}"
                        )
            except ProtocolViolation as exc:
                await self._tell(call, exc)
                raise

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                await asyncio.to_thread(self._heartbeat)

        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(writer(), name="writer"),
            asyncio.create_task(reader(), name="reader"),
            asyncio.create_task(sender.run(), name="sender"),
            asyncio.create_task(heartbeat(), name="heartbeat"),
            asyncio.create_task(stop.wait(), name="stop"),
        ]
        if self.node.db.is_postgres:
            tasks.append(
                asyncio.create_task(
                    listen(self.node.db, NOTIFY_CHANNEL_UPLINK, lambda _p: sender.wake(), stop)
                )
            )
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._sender = None
            call.cancel()  # unblocks a pending read or write first
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
        for task in done:
            if task.get_name() == "stop":
                return
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure
        raise CloudError("the cloud closed the link")

    @staticmethod
    async def _tell(call: Any, exc: ProtocolViolation) -> None:
        """Tell the cloud why this edge ends the session, and give it a moment to read it before
        the call is cancelled (a cancel would overtake the message). Best effort: the link may
        be gone."""
        with suppress(Exception):
            msg = pb.EdgeMessage(error=pb.Error(code="INVALID_ARGUMENT", reason=clean_text(str(exc), 500)))
            await asyncio.wait_for(call.write(msg), timeout=1.0)
            await asyncio.wait_for(call.done_writing(), timeout=1.0)
            await asyncio.wait_for(EdgeClient._until_ended(call), timeout=1.0)

    @staticmethod
    async def _until_ended(call: Any) -> None:
        """Read (and drop) what the cloud still sends until it ends the call: gRPC reports a
        call's end only once every message before it was read."""
        while await call.read() is not grpc.aio.EOF:
            pass

    def wake(self) -> None:
        if self._sender is not None:
            self._sender.wake()
