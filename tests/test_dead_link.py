"""A link that silently stops carrying packets (no FIN, no RST) is noticed by both sides within a
minute, thanks to HTTP/2 keepalive pings. A proxy between edge and cloud stops forwarding while
keeping both TCP connections open.

The link runs with the product's gRPC options, every keepalive timing in them divided by
:data:`SCALE` (so the test waits seconds, not half a minute): the same options (one left out of the
product's lists is left out here too: without ``grpc.http2.ping_timeout_ms`` gRPC waits 60 s for a
ping's answer, far past the scaled bound), checked against the scaled minute; the product's own
timings are checked against the real minute."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import sqlalchemy as sa
from procs import wait_until

from winstar_core.node import Node
from winstar_core.store.models import Edge
from winstar_core.transport import client as client_module
from winstar_core.transport import common
from winstar_core.transport import server as server_module

pytestmark = pytest.mark.slow

#: the keepalive timings of the link under test are the product's divided by this
SCALE = 10
#: the gRPC options that are keepalive timings (milliseconds)
TIMINGS = {
    "grpc.keepalive_time_ms",
    "grpc.keepalive_timeout_ms",
    "grpc.http2.ping_timeout_ms",
    "grpc.http2.min_ping_interval_without_data_ms",
    "grpc.http2.min_recv_ping_interval_without_data_ms",
}


def _scaled(options: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(name, value // SCALE if name in TIMINGS else value) for name, value in options]


@pytest.fixture
def scaled_keepalive(monkeypatch):
    # the product's option lists, as the server and the client read them when they start
    monkeypatch.setattr(server_module, "SERVER_OPTIONS", _scaled(common.SERVER_OPTIONS))
    monkeypatch.setattr(client_module, "CLIENT_OPTIONS", _scaled(common.CLIENT_OPTIONS))


def test_the_products_keepalive_notices_a_dead_link_within_a_minute():
    """What the scaled run below shows holds for the product's timings: a ping after
    KEEPALIVE_TIME_MS without traffic, its answer awaited KEEPALIVE_TIMEOUT_MS, on both sides."""
    for options in (common.SERVER_OPTIONS, common.CLIENT_OPTIONS):
        opts = dict(options)
        assert opts["grpc.keepalive_time_ms"] == common.KEEPALIVE_TIME_MS
        assert opts["grpc.keepalive_timeout_ms"] == opts["grpc.http2.ping_timeout_ms"]
        assert opts["grpc.http2.ping_timeout_ms"] == common.KEEPALIVE_TIMEOUT_MS
        assert opts["grpc.keepalive_permit_without_calls"] == 1
        assert opts["grpc.http2.min_ping_interval_without_data_ms"] <= common.KEEPALIVE_TIME_MS
    assert dict(common.SERVER_OPTIONS)["grpc.http2.min_recv_ping_interval_without_data_ms"] <= (
        common.KEEPALIVE_TIME_MS
    )
    assert common.KEEPALIVE_TIME_MS + common.KEEPALIVE_TIMEOUT_MS < 60_000


class StallingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def main() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(main(), self.loop)
        ready.wait(5)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while self.stalled.is_set():  # swallow the link: read nothing, send nothing, close nothing
                    await asyncio.sleep(0.1)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while self.stalled.is_set():  # new connections hang too, like a dead route
            await asyncio.sleep(0.1)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_silent_dead_link_is_noticed_by_both_sides_within_a_minute(
    sqlite_url, tmp_path, platform, link_runner, scaled_keepalive
):
    cloud = Node(sqlite_url, platform=platform)
    cloud.init_cloud()
    with cloud.cloud() as c:
        edge, secret = c.create_edge("e", c.create_tenant("Acme"))
    server = link_runner.start_cloud(cloud, 0)
    proxy = StallingProxy(server.port)
    edge_node = Node(f"sqlite:///{tmp_path / 'e.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{proxy.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    link_runner.wait_connected(handle)

    def cloud_sees_connected() -> bool:
        with cloud.db.read() as conn:
            return bool(conn.scalar(sa.select(Edge.connected)))

    wait_until(cloud_sees_connected)
    proxy.stalled.set()
    started = time.monotonic()
    minute = 60 / SCALE
    wait_until(
        lambda: not handle.client.connected.is_set(), timeout=60, interval=0.05, what="the edge to notice"
    )
    edge_noticed = time.monotonic() - started
    wait_until(lambda: not cloud_sees_connected(), timeout=60, interval=0.05, what="the cloud to notice")
    cloud_noticed = time.monotonic() - started
    assert edge_noticed < minute and cloud_noticed < minute, (edge_noticed, cloud_noticed)

    proxy.stalled.clear()  # the route comes back: the edge reconnects by itself
    link_runner.wait_connected(handle, timeout=60)
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, 0.2)
    proxy.close()
    edge_node.close()
    cloud.close()
