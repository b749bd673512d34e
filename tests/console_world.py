"""The console's test world: a cloud with two tenants, customers and users, and the console served
by uvicorn on a loopback port in a thread of the test process (real HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from procs import free_port

from winstar_core.console.app import make_app
from winstar_core.node import Node
from winstar_core.services import auth

PASSWORD = "correct horse battery"


class ConsoleServer:
    """The console on ``127.0.0.1:PORT`` in a thread; :meth:`stop` ends it."""

    def __init__(self, node: Node) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            make_app(node), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class ConsoleWorld:
    """Tenant "acme" (admin, two customers "north" and "south", a customer user of each, edges of
    each) and tenant "other" (its admin, its edge); a token for each user in ``tokens``."""

    cloud: Node
    server: ConsoleServer
    ids: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, who: str | None = None) -> httpx.Client:
        """An HTTP client sending ``who``'s token (none: no Authorization header)."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        with self.client(who) as c:
            return c.request(method, path, **kw)


def build_world(cloud: Node, edition: str = "ce") -> dict[str, Any]:
    """Seed ``cloud`` (initialised) with the world's tenants, users and edges; returns ids and tokens."""
    ids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    with cloud.cloud() as c:
        acme = c.create_tenant("acme")
        other = c.create_tenant("other")
        north = c.create_customer("north", acme)
        south = c.create_customer("south", acme)
        roles = []
        if edition == "pe":
            roles = [c.create_role("device writers", acme, ["DEVICE:WRITE", "EDGE:WRITE"])]
        users = {
            "admin": c.create_user("admin@acme.test", acme, "TENANT_ADMIN"),
            "north": c.create_user("north@acme.test", acme, "CUSTOMER_USER", north),
            "south": c.create_user("south@acme.test", acme, "CUSTOMER_USER", south, roles),
            "other": c.create_user("admin@other.test", other, "TENANT_ADMIN"),
        }
        for key, user in users.items():
            user.password = auth.hash_password(PASSWORD)
            tokens[key] = auth.create_token(c.session, user, f"{key} token").token
            ids[f"user_{key}"] = str(user.id)
        for name, tenant, customer in (
            ("plant-1", acme, None),
            ("north-edge", acme, north),
            ("south-edge", acme, south),
            ("other-edge", other, None),
        ):
            edge, secret = c.create_edge(name, tenant, customer)
            ids[name] = str(edge.id)
            ids[f"{name}.secret"] = secret
            ids[f"{name}.routing_key"] = edge.routing_key
        for name, tenant, customer in (
            ("pump-1", acme, None),
            ("north-pump", acme, north),
            ("south-pump", acme, south),
            ("other-pump", other, None),
        ):
            ids[name] = str(c.create_entity("device", name, tenant, {}, customer=customer).id)
        ids.update(acme=str(acme.id), other=str(other.id), north=str(north.id), south=str(south.id))
    return {"ids": ids, "tokens": tokens}


@pytest.fixture
def console_world(cloud_node: Node) -> Iterator[ConsoleWorld]:
    """A CE cloud (SQLite and PostgreSQL) seeded by :func:`build_world`, its console running."""
    seeded = build_world(cloud_node)
    server = ConsoleServer(cloud_node).start()
    try:
        yield ConsoleWorld(cloud_node, server, seeded["ids"], seeded["tokens"])
    finally:
        server.stop()


@pytest.fixture
def pe_console_world(pe_cloud_node: Node) -> Iterator[ConsoleWorld]:
    """As :func:`console_world` on a PE cloud, where the role of ``south`` grants DEVICE:WRITE and
    EDGE:WRITE."""
    seeded = build_world(pe_cloud_node, "pe")
    server = ConsoleServer(pe_cloud_node).start()
    try:
        yield ConsoleWorld(pe_cloud_node, server, seeded["ids"], seeded["tokens"])
    finally:
        server.stop()
