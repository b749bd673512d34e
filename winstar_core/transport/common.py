"""gRPC options and helpers shared by the cloud server and the edge client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import sqlalchemy as sa

from winstar_core.store.db import TCP_KEEPALIVES, Database
from winstar_core.transport.link import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

#: Keepalive, written out. A link that silently drops packets (no FIN, no RST: a stale NAT entry,
#: a cellular link gone quiet) shows no error to TCP for many minutes; HTTP/2 pings find it.
#: Each side pings after 20 s without traffic and drops the connection if no answer comes within
#: 10 s, so both notice a dead link within about 30 s (well under a minute).
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000

COMMON_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # current gRPC core waits for a ping's answer per this one (default 60 s), not keepalive_timeout
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # ping even when no RPC is active, and without a data frame in between
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # and send them every keepalive period even on an idle link: gRPC's default spaces pings that
    # see no data in between by 5 minutes, which would hide a dead idle link that long
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    *COMMON_OPTIONS,
    # an edge needs one stream (and a health check): many calls on one connection are someone
    # trying to get past the per-address throttle at once
    ("grpc.max_concurrent_streams", 16),
    # accept the edges' pings every 10 s; gRPC's default (5 min) would answer them with GOAWAY
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    # one process per address: a second node on a taken port fails to start (and a node that
    # could bind its address knows the node registered there before it is gone)
    ("grpc.so_reuseport", 0),
]

CLIENT_OPTIONS: list[tuple[str, int]] = [
    *COMMON_OPTIONS,
    # reconnection is ours (jittered backoff in EdgeClient), not the channel's
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def libpq_url(db: Database) -> str:
    """The database's URL for a plain libpq connection, with the TCP keepalives of every other."""
    url = db.engine.url.set(drivername="postgresql")
    url = url.update_query_dict({k: str(v) for k, v in TCP_KEEPALIVES.items()})
    return url.render_as_string(hide_password=False)


async def listen(db: Database, channel: str, on_notify: Callable[[str], None], stop: asyncio.Event) -> None:
    """LISTEN on a dedicated PostgreSQL connection and call ``on_notify(payload)``; reconnects
    after errors. Callers keep a polling fallback, so a lost notification only costs latency."""
    import psycopg

    delay = 0.5
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(libpq_url(db), autocommit=True) as conn:
                await conn.execute(sa.text(f"LISTEN {channel}").text)
                delay = 0.5
                on_notify("*")  # anything committed while we were not listening
                async for note in conn.notifies():
                    on_notify(note.payload)
                    if stop.is_set():
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database restarts: keep polling, listen again later
            log.warning("LISTEN %s failed (%s); retrying in %.1fs", channel, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, 10.0)
