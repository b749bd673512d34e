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
