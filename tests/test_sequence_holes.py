"""DESIGN.md invariant 3: a reader that moves its mark to the highest seq it has seen must never
skip an event that a slower transaction commits later. Real concurrent writers on PostgreSQL."""

from __future__ import annotations

import random
import threading
import time

import pytest
import sqlalchemy as sa
from helpers import make_tenant_and_edge

from winstar_core.node import Node
from winstar_core.services.common import UPDATED
from winstar_core.store.models import EdgeEvent
from winstar_core.store.outbox import OutboxEvent

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_cloud(pg_url, platform):
    node = Node(pg_url, platform=platform)
    node.init_cloud()
    yield node
    node.close()


def _read_after(node: Node, edge_id, mark: int) -> list[int]:
    with node.db.engine.connect() as conn:
        return list(
            conn.scalars(
                sa.select(EdgeEvent.seq)
                .where(EdgeEvent.edge_id == edge_id, EdgeEvent.seq > mark)
                .order_by(EdgeEvent.seq)
            )
        )


def test_slow_first_writer_blocks_the_second_until_it_commits(pg_cloud):
    tenant, edge, _ = make_tenant_and_edge(pg_cloud)
    a_has_seq = threading.Event()
    a_may_commit = threading.Event()
    b_done = threading.Event()

    def writer_a():
        with pg_cloud.cloud() as c:
            c.outbox.downlink(edge.id, OutboxEvent(tenant.id, "asset", UPDATED, None, b"A"))
            c.outbox.flush(c.session)  # seq handed out, transaction still open
            a_has_seq.set()
            a_may_commit.wait(10)

    def writer_b():
        with pg_cloud.cloud() as c:
            c.outbox.downlink(edge.id, OutboxEvent(tenant.id, "asset", UPDATED, None, b"B"))
        b_done.set()

    ta = threading.Thread(target=writer_a)
    ta.start()
    assert a_has_seq.wait(10)
    tb = threading.Thread(target=writer_b)
    tb.start()
    # B cannot commit a higher seq while A holds seq 1 uncommitted: a reader sees nothing yet,
    # instead of seeing seq 2 and moving its mark past 1.
    assert not b_done.wait(0.5)
    assert _read_after(pg_cloud, edge.id, 0) == []
    a_may_commit.set()
    ta.join(10)
    tb.join(10)
    assert b_done.is_set()
    assert _read_after(pg_cloud, edge.id, 0) == [1, 2]


def test_concurrent_writers_and_a_moving_reader_skip_nothing(pg_cloud):
    tenant, edge, _ = make_tenant_and_edge(pg_cloud)
    writers, per_writer = 4, 40
    stop = threading.Event()
    seen: list[int] = []

    def writer(k: int):
        rnd = random.Random(k)
        for _ in range(per_writer):
            with pg_cloud.cloud() as c:
                for _ in range(rnd.randint(1, 3)):
                    c.outbox.downlink(edge.id, OutboxEvent(tenant.id, "asset", UPDATED, None, b"x"))
                c.outbox.flush(c.session)
                time.sleep(rnd.random() * 0.004)  # commit late, after others may have begun

    def reader():
        mark = 0
        while True:
            done = stop.is_set()
            got = _read_after(pg_cloud, edge.id, mark)
            if got:
                seen.extend(got)
                mark = got[-1]  # the reader trusts seq order, as the delivery engine does
            if done:
                return
            time.sleep(0.001)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    r.join(60)
    total = len(_read_after(pg_cloud, edge.id, 0))
    assert total >= writers * per_writer
    assert seen == list(range(1, total + 1)), "the reader skipped an event committed out of order"
