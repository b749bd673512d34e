"""The end-to-end world: a cloud node, an edge node, and their `winstar run` processes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from procs import Proc, free_port, stop_all, wait_until

from winstar_core.node import Node
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity


@dataclass
class World:
    cloud: Node
    edge: Node
    tmp: Path
    port: int
    edge_id: uuid.UUID
    routing_key: str
    secret: str
    procs: list[Proc] = field(default_factory=list)
    cloud_proc: Proc | None = None
    edge_proc: Proc | None = None

    def start_cloud(self, *extra: str) -> Proc:
        self.cloud_proc = Proc(
            self.cloud.url, self.tmp / "cloud.log", "--listen", f"127.0.0.1:{self.port}", *extra
        )
        self.procs.append(self.cloud_proc.start())
        return self.cloud_proc

    def start_edge(self, *extra: str) -> Proc:
        self.edge_proc = Proc(self.edge.url, self.tmp / "edge.log", *extra)
        self.procs.append(self.edge_proc.start())
        return self.edge_proc

    def edge_connected(self) -> bool:
        with self.edge.db.read() as conn:
            row = conn.execute(sa.text("SELECT value FROM node_config WHERE key = 'connected'")).first()
        return bool(row) and str(row[0]).strip('"') in ("true", "1", "True")

    def wait_connected(self) -> None:
        wait_until(self.edge_connected, 30, what="the edge to connect")

    def edge_entities(self) -> dict[uuid.UUID, tuple[str, str, int]]:
        with self.edge.db.read() as conn:
            return {
                i: (t, n, v)
                for i, t, n, v in conn.execute(sa.select(Entity.id, Entity.type, Entity.name, Entity.version))
            }

    def cloud_pending(self) -> int:
        with self.cloud.db.read() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.count()).select_from(EdgeEvent).where(EdgeEvent.status == "PENDING")
                )
            )

    def edge_pending(self) -> int:
        with self.edge.db.read() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.count()).select_from(CloudEvent).where(CloudEvent.status == "PENDING")
                )
            )

    def cloud_do(self, fn: Any) -> Any:
        with self.cloud.cloud() as c:
            return fn(c)

    def stop_all(self) -> None:
        stop_all(self.procs)


def _world(db_url: str, tmp_path: Path, platform: Any, edition: str) -> World:
    cloud = Node(db_url, platform=platform)
    cloud.init_cloud(edition)
    with cloud.cloud() as c:
        t = c.create_tenant("Acme")
        if edition == "pe":
            role = c.create_role("writers", t, ["DEVICE:WRITE"])
            c.create_user("admin@acme.io", t, "TENANT_ADMIN", roles=[role])
        else:
            c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        edge, secret = c.create_edge("Plant 7", t)
    port = free_port()
    edge_node = Node(f"sqlite:///{tmp_path / 'edge.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{port}", edge.routing_key, secret)
    return World(cloud, edge_node, tmp_path, port, edge.id, edge.routing_key, secret)


def _running_world(db_url, tmp_path, platform, edition):
    w = _world(db_url, tmp_path, platform, edition)
    yield w
    w.stop_all()
    w.cloud.close()
    w.edge.close()


@pytest.fixture
def world(db_url, tmp_path, platform):
    yield from _running_world(db_url, tmp_path, platform, "ce")


@pytest.fixture
def pe_world(db_url, tmp_path, platform):
    yield from _running_world(db_url, tmp_path, platform, "pe")


def _tenant(c):
    return c.find_tenant("Acme")
