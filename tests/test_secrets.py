"""No table holds an edge secret in plain text, on either side."""

from __future__ import annotations

import os
import stat

import sqlalchemy as sa
from helpers import make_tenant_and_edge

from winstar_core.node import Node, read_secret
from winstar_core.services.cloud import check_secret


def _all_text(node: Node) -> str:
    out = []
    with node.db.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                out.extend(
                    repr(v) if not isinstance(v, bytes | memoryview) else bytes(v).decode("latin-1")
                    for v in row
                )
    return "\n".join(out)


def test_no_table_holds_the_secret(cloud_node, tmp_path, platform):
    _, edge, secret = make_tenant_and_edge(cloud_node)
    edge_node = Node(f"sqlite:///{tmp_path / 'e.db'}", platform=platform)
    edge_node.init_edge("127.0.0.1:7070", edge.routing_key, secret)
    assert secret not in _all_text(cloud_node)
    assert secret not in _all_text(edge_node)
    with cloud_node.cloud() as c:
        stored = c.find_edge(edge.id)
        assert check_secret(stored, secret) and not check_secret(stored, secret + "x")
    # the edge keeps it in a file only its owner can read
    path = tmp_path / "e.db.secret"
    assert read_secret(path) == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    edge_node.close()
