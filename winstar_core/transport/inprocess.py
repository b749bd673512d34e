"""A cloud server and edge clients running in this process, on a background event loop, over
real gRPC on loopback. Used by `winstar demo` and by the test kit (``linked`` fixture)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from winstar_core.node import Node
from winstar_core.transport.client import EdgeClient
from winstar_core.transport.server import CloudServer

T = TypeVar("T")


@dataclass
class EdgeHandle:
    client: EdgeClient
    stop: asyncio.Event
    task: asyncio.Task[None]


class LinkRunner:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="winstar-link", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_cloud(self, node: Node, port: int = 0, **kw: Any) -> CloudServer:
        async def start() -> CloudServer:
            server = CloudServer(node, f"127.0.0.1:{port}", **kw)
            await server.start()
            return server

        return self.run(start())

    def stop_cloud(self, server: CloudServer, grace: float = 1.0) -> None:
        self.run(server.stop(grace))

    def start_edge(self, node: Node, cloud_addr: str | None = None, **kw: Any) -> EdgeHandle:
        async def start() -> EdgeHandle:
            client = EdgeClient(node, cloud_addr, **kw)
            stop = asyncio.Event()
            return EdgeHandle(client, stop, asyncio.create_task(client.run(stop)))

        return self.run(start())

    def stop_edge(self, handle: EdgeHandle) -> None:
        async def stop() -> None:
            handle.stop.set()
            await handle.task

        self.run(stop())

    def wait_connected(self, handle: EdgeHandle, timeout: float = 30) -> None:
        self.run(asyncio.wait_for(handle.client.connected.wait(), timeout), timeout + 1)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            self.run(drain())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        # the loop is left open: grpc objects collected later still schedule their shutdown on it


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
