"""Many senders' reads and acks served together (transport/gather.py, transport/batched.py), and
many streams' seqs allocated by one statement (store/outbox.py allocate_many): each gives exactly
what the one-stream path gives, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import sqlalchemy as sa
from helpers import make_tenant_and_edge

from winstar_core.services.common import UPDATED
from winstar_core.store.models import DELIVERED, FAILED, HELD, PENDING, EdgeEvent
from winstar_core.store.outbox import OutboxEvent
from winstar_core.transport.batched import acknowledge_many, fetch_many
from winstar_core.transport.gather import Gatherer
from winstar_core.transport.link import OutboxStream
from winstar_core.transport.pb import sync_pb2 as pb


def _edges(node, n):
    tenant, first, _ = make_tenant_and_edge(node)
    with node.cloud() as c:
        t = c.find_tenant(tenant.id)
        return tenant, [first] + [c.create_edge(f"edge-{i + 1}", t)[0] for i in range(1, n)]


def _write(node, tenant, edge, bodies):
    with node.cloud() as c:
        for body in bodies:
            c.outbox.downlink(edge.id, OutboxEvent(tenant.id, "asset", UPDATED, None, body))


def _set_status(node, edge, seq, status):
    with node.db.begin() as s:
        s.execute(
            sa.update(EdgeEvent)
            .where(EdgeEvent.edge_id == edge.id, EdgeEvent.seq == seq)
            .values(status=status)
        )


def _statuses(node, edge):
    with node.db.read() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.select(EdgeEvent.seq, EdgeEvent.status, EdgeEvent.error)
                .where(EdgeEvent.edge_id == edge.id)
                .order_by(EdgeEvent.seq)
            )
        ]


def test_a_gathered_read_gives_each_stream_what_its_own_read_gives(cloud_node):
    tenant, (e1, e2, e3) = _edges(cloud_node, 3)
    _write(cloud_node, tenant, e1, [b"x" * n for n in (10, 3000, 20, 5000, 1, 7)])
    _write(cloud_node, tenant, e3, [b"y" * 100] * 4)
    _set_status(cloud_node, e1, 3, DELIVERED)  # not PENDING: never read again
    _set_status(cloud_node, e1, 5, HELD)
    s1, s2, s3 = (OutboxStream(cloud_node.db, e.id) for e in (e1, e2, e3))
    requests = [
        (s1, 0, 10, 1_000_000),
        (s1, 1, 2, 1_000_000),  # the limit cuts
        (s1, 0, 10, 3200),  # the byte budget cuts after the second event
        (s1, 0, 10, 1),  # a budget below one event still gives the first
        (s2, 0, 10, 1_000_000),  # an empty stream: nothing, and its counter (none yet: 0)
        (s3, 2, 500, 1_000_000),
        (s3, 4, 500, 1_000_000),  # past the end: nothing, and no counter (nothing to announce)
    ]
    gathered = fetch_many(cloud_node.db, requests)
    own = [stream.fetch(after, limit, most) for stream, after, limit, most in requests]
    assert gathered == own
    seqs = [[e.seq for e in events] for events, _ in gathered]
    assert seqs == [[1, 2, 4, 6], [2, 4], [1, 2], [1], [], [3, 4], []]
    assert [last for _, last in gathered] == [6, 6, 6, 6, 0, 4, 0]
    assert gathered[0][0][1].body == b"x" * 3000 and gathered[5][0][0].body == b"y" * 100


def test_a_gathered_ack_marks_each_stream_as_its_own_ack_would(cloud_node):
    tenant, (e1, e2) = _edges(cloud_node, 2)
    for e in (e1, e2):
        _write(cloud_node, tenant, e, [b"a", b"b", b"c", b"d"])
    _set_status(cloud_node, e2, 4, HELD)
    s1, s2 = OutboxStream(cloud_node.db, e1.id), OutboxStream(cloud_node.db, e2.id)
    ok = lambda seq: pb.EventResult(seq=seq, ok=True)  # noqa: E731
    bad = lambda seq, why: pb.EventResult(seq=seq, ok=False, error=why)  # noqa: E731
    acknowledge_many(
        cloud_node.db,
        [
            (s1, [ok(1), bad(2, "no such type"), ok(3)]),
            (s2, [ok(2), ok(3)]),
            (s2, [ok(4), bad(1, "refused\x00here")]),  # a HELD row stays HELD
        ],
    )
    assert [r[:2] for r in _statuses(cloud_node, e1)] == [
        (1, DELIVERED),
        (2, FAILED),
        (3, DELIVERED),
        (4, PENDING),
    ]
    assert _statuses(cloud_node, e1)[1][2] == "no such type"
    assert _statuses(cloud_node, e2) == [
        (1, FAILED, "refused\\0here"),
        (2, DELIVERED, None),
        (3, DELIVERED, None),
        (4, HELD, None),
    ]


def test_the_gatherer_serves_whoever_waited_in_one_batch():
    async def scenario():
        release = asyncio.Event()
        batches: list[list[int]] = []

        async def run_batch(requests):
            batches.append(list(requests))
            if len(batches) == 1:
                await release.wait()
            if 99 in requests:
                raise RuntimeError("the database went away")
            return [r * 10 for r in requests]

        g: Gatherer[int, int] = Gatherer(run_batch, max_weight=5)
        first = asyncio.create_task(g.submit(1))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(g.submit(n, weight=2)) for n in (2, 3, 4)]
        dropped = asyncio.create_task(g.submit(5))
        await asyncio.sleep(0)
        dropped.cancel()
        release.set()
        assert await first == 10
        assert [await t for t in waiting] == [20, 30, 40]
        # a lone request runs at once; the weight cap splits the ones that waited; a cancelled
        # request is never run
        assert batches == [[1], [2, 3], [4]]
        doomed = [asyncio.create_task(g.submit(n)) for n in (99, 7)]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await g.submit(8) == 80  # a failed batch leaves the gatherer working
        assert g.batches == 4 and g.requests == 5

    asyncio.run(scenario())


@pytest.mark.postgres
def test_concurrent_writers_of_overlapping_streams_number_each_stream_without_holes(pg_url, platform):
    from winstar_core.node import Node

    node = Node(pg_url, platform=platform)
    node.init_cloud()
    try:
        tenant, edges = _edges(node, 12)
        errors: list[BaseException] = []

        def writer(seed: int) -> None:
            rnd = random.Random(seed)
            try:
                for _ in range(15):
                    some = rnd.sample(edges, rnd.randint(2, len(edges)))
                    with node.cloud() as c:
                        for e in some:
                            for _ in range(rnd.randint(1, 3)):
                                c.outbox.downlink(e.id, OutboxEvent(tenant.id, "asset", UPDATED, None, b"z"))
            except BaseException as exc:  # a deadlock would land here
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        total = 0
        for e in edges:
            seqs = [seq for seq, *_ in _statuses(node, e)]
            assert seqs == list(range(1, len(seqs) + 1))
            total += len(seqs)
        assert total > 6 * 15 * 2
    finally:
        node.close()
