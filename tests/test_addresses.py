"""`--cloud HOST:PORT[,HOST:PORT...]`: every malformed list is a one-line refusal that writes nothing;
a peer announcing absurd schema versions only makes the sender send (or hold), never fail."""

from __future__ import annotations

import pytest

from winstar_core.errors import WinstarError
from winstar_core.node import Node, check_addresses
from winstar_core.transport.holding import capabilities
from winstar_core.transport.pb import sync_pb2 as pb


@pytest.mark.parametrize(
    "value",
    [
        "",
        ",",
        "a:1,",
        ",a:1",
        "a:1,,b:2",
        "a:1,b",
        "a:0",
        "a:65536",
        "a:1,b:-2",
        "a:1," + "x" * 5000,
        "a:1,b:2\x00",
    ],
)
def test_a_malformed_list_of_cloud_addresses_is_refused_and_writes_nothing(value, tmp_path):
    with pytest.raises(WinstarError) as err:
        check_addresses(value, "--cloud")
    assert "\n" not in str(err.value) and "--cloud" in str(err.value)
    node = Node(f"sqlite:///{tmp_path / 'e.db'}")
    with pytest.raises(WinstarError):
        node.init_edge(value, "rk", "secret")
    assert node.role() is None  # nothing written
    node.close()


def test_a_good_list_is_kept_in_order():
    assert check_addresses(" a:1, [::1]:7070 ,b:65535", "--cloud") == ["a:1", "[::1]:7070", "b:65535"]


def test_announced_versions_out_of_reach_never_break_the_sender():
    infos = [pb.EntityTypeInfo(type="device", schema_version=2**32 - 1), pb.EntityTypeInfo(type="device")]
    caps = capabilities(infos, [], "the edge")
    assert caps is not None and caps.peer == {"device": 2**32 - 1}
    assert caps.why_held(1, "device", "ADDED", "x", b"\xff" * 10) is None  # it reads any version
    assert capabilities([], [], "the edge") is None  # announced nothing: sent everything


def test_a_refusal_that_says_when_is_taken_at_its_word_within_bounds():
    from winstar_core.transport.client import retry_hint

    assert retry_hint("too many failed attempts from this address: retry in 8s") == 8
    assert retry_hint("8 connections from this address are being authenticated already: retry in 1s") == 1
    assert retry_hint("retry in 99999s") is None  # not a wait any cloud of ours asks for
    assert retry_hint("retry in 3600s") == 30  # a cloud cannot keep an edge away long (30-60 s)
    assert retry_hint("retry in 0s") == 0.5  # nor make it spin
    assert retry_hint("invalid routing key or secret") is None


def test_the_next_node_of_the_list_is_tried_at_once_and_the_backoff_grows_once_a_round():
    from winstar_core.transport.client import BACKOFF_START_S, next_delay

    backoff = 4.0
    delay, after = next_delay(backoff, 30.0, None, next_in_round=True)
    assert delay <= BACKOFF_START_S and after == backoff  # another node: now, and no growth
    delay, after = next_delay(backoff, 30.0, None, next_in_round=False)
    assert 2.0 <= delay <= 4.0 and after == 8.0  # the round is over: back off
    assert next_delay(20.0, 30.0, None, next_in_round=False)[1] == 30.0  # up to the cap
    delay, after = next_delay(backoff, 30.0, 5.0, next_in_round=False)
    assert 5.0 <= delay <= 10.0 and after == backoff  # the cloud said when


def test_an_edge_leaves_a_node_that_keeps_telling_it_to_come_back_later(tmp_path, monkeypatch):
    """A node's throttle may refuse a whole address for another box's failures: after a few
    refusals naming a wait, the edge tries the next node of its list (the policy alone: the
    session is replaced by a refusal, the waits by none)."""
    import asyncio

    import grpc

    from winstar_core.transport import client as client_module

    edge = Node(f"sqlite:///{tmp_path / 'e.db'}")
    edge.init_edge("127.0.0.1:1,127.0.0.1:2", "rk", "s")
    client = client_module.EdgeClient(edge)
    tried: list[str] = []

    async def refused(stop: asyncio.Event) -> None:
        tried.append(client.cloud_addr)
        if len(tried) >= 12:
            stop.set()
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            None,
            None,
            "too many failed attempts from this address: retry in 600s",
        )

    monkeypatch.setattr(client, "_session", refused)
    monkeypatch.setattr(client_module, "next_delay", lambda b, c, h, next_in_round: (0.0, b))
    asyncio.run(client.run(asyncio.Event()))
    edge.close()
    per_node = client_module.HINTED_PER_NODE + 1
    # the same node while it names a wait, then the next one, and so on: never pinned
    assert tried == (["127.0.0.1:1"] * per_node + ["127.0.0.1:2"] * per_node) * 2
