"""A cloned edge box: two real `winstar run` edge processes from copies of one database.

An edge database copied to a second box (an SD card or VM image cloned) becomes another instance
there (another path: another place). The cloud serves one instance per edge, the first it saw,
and refuses the other until an operator runs `winstar edge reset-instance`. These tests prove with
real processes that no change of either box is lost silently: whatever a box made is in the cloud
(exactly once) or still PENDING on that box, and the box's status says so.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from e2e_world import World, _tenant
from procs import Proc, cli, wait_until

from winstar_core.node import INSTANCE_PLACE_ENV, Node
from winstar_core.services.instances import reset_instance
from winstar_core.store.models import CloudEvent, Edge, Entity, NodeConfig

pytestmark = pytest.mark.slow

USER = "admin@acme.io"
EDGE = "Plant 7"


@pytest.fixture(autouse=True)
def _real_place(monkeypatch):
    """The boxes' places are their real ones (the `winstar run` children inherit this env)."""
    monkeypatch.delenv(INSTANCE_PLACE_ENV, raising=False)
    monkeypatch.delenv("WINSTAR_EDGE_SECRET", raising=False)


# -- reading a box and the cloud (in this process, no CLI: cheap enough to poll) ----------------------


def _config(node: Node, key: str) -> Any:
    with node.db.read() as conn:
        return conn.scalar(sa.select(NodeConfig.value).where(NodeConfig.key == key))


def _connected(node: Node) -> bool:
    return _config(node, "connected") in (True, "true", 1)


def _error(node: Node) -> str:
    return str(_config(node, "last_error") or "")


def _entities(node: Node) -> dict[uuid.UUID, tuple[str, str]]:
    with node.db.read() as conn:
        return {i: (t, n) for i, t, n in conn.execute(sa.select(Entity.id, Entity.type, Entity.name))}


def _uplinks(node: Node) -> list[tuple[int, str, str, uuid.UUID | None, str]]:
    """(seq, type, action, entity id, status) of every uplink of a box."""
    with node.db.read() as conn:
        rows = conn.execute(
            sa.select(
                CloudEvent.seq, CloudEvent.type, CloudEvent.action, CloudEvent.entity_id, CloudEvent.status
            ).order_by(CloudEvent.seq)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def _uplink_ids(node: Node, status: str) -> set[uuid.UUID]:
    return {eid for _, _, _, eid, st in _uplinks(node) if st == status and eid is not None}


def _cloud_devices(w: World) -> dict[uuid.UUID, str]:
    with w.cloud.db.read() as conn:
        return dict(conn.execute(sa.select(Entity.id, Entity.name).where(Entity.type == "device")).all())


def _cloud_device_names(w: World) -> list[str]:
    with w.cloud.db.read() as conn:
        return list(conn.scalars(sa.select(Entity.name).where(Entity.type == "device")))


def _cloud_edge(w: World) -> tuple[str | None, bool, str | None]:
    """(served instance, reset pending, conflict line) of the edge, read from the cloud's table."""
    with w.cloud.db.read() as conn:
        row = conn.execute(
            sa.select(Edge.instance_id, Edge.instance_reset, Edge.conflict).where(Edge.id == w.edge_id)
        ).one()
    return row[0], bool(row[1]), row[2]


def _effective(w: World) -> set[uuid.UUID]:
    return set(w.cloud_do(lambda c: c.effective_entity_ids(w.edge_id)))


def _make(node: Node, *names: str) -> dict[str, uuid.UUID]:
    """Devices made on a box through the Node API (the box's `winstar run` may be running)."""
    made = {}
    for name in names:
        with node.edge() as e:
            made[name] = e.create_entity("device", name, None, user_email=USER).id
    return made


def _make_cli(node: Node, name: str) -> dict[str, uuid.UUID]:
    out = cli(node.url, "entity", "create", "device", name, "--user", USER, "--json")
    return {name: uuid.UUID(out["id"])}


def _in_cloud(w: World, ids: dict[str, uuid.UUID]) -> bool:
    devices = _cloud_devices(w)
    return all(devices.get(i) == name for name, i in ids.items())


def _assert_nothing_lost(w: World, boxes: dict[str, tuple[Node, dict[str, uuid.UUID]]]) -> None:
    """Every device a box shows DELIVERED is in the cloud, once; every device made on a box is in
    the cloud or in that box's PENDING uplinks; no uplink FAILED; no device twice in the cloud.
    Each box is read before the cloud: what it shows delivered or not pending then is applied."""
    for label, (node, made) in boxes.items():
        ups = _uplinks(node)
        cloud = _cloud_devices(w)
        twice = [n for n, k in Counter(cloud.values()).items() if k > 1]
        assert not twice, f"devices twice in the cloud: {twice}"
        assert not [u for u in ups if u[4] == "FAILED"], f"box {label}: failed uplinks {ups}"
        delivered = {eid for _, t, _, eid, st in ups if st == "DELIVERED" and t == "device"}
        pending = {eid for _, _, _, eid, st in ups if st == "PENDING"}
        gone = delivered - set(cloud)
        assert not gone, f"box {label} shows {gone} delivered, the cloud does not have them"
        for name, i in made.items():
            assert i in cloud or i in pending, (
                f"box {label}: device {name} ({i}) is neither in the cloud nor pending: lost silently"
            )
            if i in cloud:  # (it may still be PENDING too: applied, its ack not yet back)
                assert cloud[i] == name, (label, name, cloud[i])


def _copy_box(w: World, dst: Path) -> str:
    """Copy the edge database (its process stopped) and its secret file, as a cloned card would."""
    src_path = w.tmp / "edge.db"
    with sqlite3.connect(src_path) as src, sqlite3.connect(dst) as out:
        src.backup(out)
    src.close()
    out.close()
    shutil.copy2(src_path.with_name("edge.db.secret"), dst.with_name(dst.name + ".secret"))
    return f"sqlite:///{dst}"


def _assign_new_asset(c: Any, name: str) -> uuid.UUID:
    asset = c.create_entity("asset", name, _tenant(c))
    c.assign(c.find_edge(EDGE), asset)
    return asset.id


def _restart(p: Proc) -> None:
    assert p.stop() == 0, p.output()[-2000:]
    p.start()


# -- the tests ---------------------------------------------------------------------------------------


def test_a_cloned_box_is_refused_until_reset_and_nothing_of_either_box_is_lost(world):
    w = world
    w.start_cloud()
    box_a = w.start_edge()
    w.wait_connected()
    a_id = _config(w.edge, "instance_id")
    assert a_id and str(uuid.UUID(a_id)) == a_id

    # 1. box A makes devices; they reach the cloud
    made_a = _make_cli(w.edge, "a1") | _make(w.edge, "a2", "a3", "a4", "a5")
    wait_until(lambda: _in_cloud(w, made_a) and w.edge_pending() == 0, 20, what="a1..a5 in the cloud")
    assert _cloud_edge(w) == (a_id, False, None)

    # 2. the card is cloned: B at another path is another instance, and is refused
    assert box_a.stop() == 0
    url_b = _copy_box(w, w.tmp / "edge2.db")
    b = Node(url_b, platform=w.edge.platform)
    box_b = Proc(url_b, w.tmp / "edge2.log")
    boxes = {"A": (w.edge, made_a), "B": (b, {})}
    try:
        box_a = w.start_edge()
        w.procs.append(box_b.start())
        wait_until(lambda: "another box" in _error(b), 20, what="box B to be refused")
        w.wait_connected()
        st = cli(url_b, "status", "--json")
        b_id = st["instance"]
        assert b_id and b_id != a_id and str(uuid.UUID(b_id)) == b_id
        assert _config(b, "instance_copied_from") == a_id
        assert _config(w.edge, "instance_id") == a_id  # A at home: the same instance
        assert st["connected"] is False
        assert st["error"] == (
            f"FAILED_PRECONDITION: another box (instance {a_id}) is using this edge's credentials; "
            f"this box is instance {b_id}. If this box should be the edge, run "
            f"`winstar edge reset-instance '{EDGE}'` in the cloud"
        )
        shown = cli(w.cloud.url, "edge", "show", EDGE, "--json")
        assert shown["instance"] == a_id and shown["connected"] is True
        assert shown["conflict"].startswith(f"box {b_id} refused at ")
        assert shown["conflict"].endswith(f"another box ({a_id}) is the edge")

        # A is still the edge and served: an assignment made in the cloud reaches A
        boiler = w.cloud_do(lambda c: _assign_new_asset(c, "Boiler"))
        wait_until(lambda: boiler in _entities(w.edge), 20, what="the asset on box A")

        # 3. both boxes work while B is refused
        made_a |= _make(w.edge, "a6", "a7", "a8", "a9", "a10")
        made_b = _make_cli(b, "b1") | _make(b, "b2", "b3", "b4", "b5")
        boxes["B"] = (b, made_b)
        wait_until(lambda: _in_cloud(w, made_a) and w.edge_pending() == 0, 20, what="a6..a10 in the cloud")
        _restart(box_b)  # try at once, and count what is not delivered
        wait_until(
            lambda: "(5 uplinks of this box not delivered" in _error(b), 20, what="B to count its uplinks"
        )
        st = cli(url_b, "status", "--json")
        assert st["connected"] is False and st["pending_uplinks"] == 5
        assert st["error"].startswith(f"FAILED_PRECONDITION: another box (instance {a_id})")
        assert "reset-instance" in st["error"]
        assert st["error"].endswith(
            "(5 uplinks of this box not delivered: `winstar uplinks --status pending`)"
        )
        pending = cli(url_b, "uplinks", "--status", "pending", "--json")
        assert sorted((u["type"], u["action"], u["entity_id"]) for u in pending) == sorted(
            ("device", "ADDED", str(i)) for i in made_b.values()
        )
        assert not set(made_b.values()) & _uplink_ids(b, "DELIVERED"), "B was acknowledged"
        cloud = _cloud_devices(w)
        assert not set(made_b.values()) & set(cloud) and not {"b1", "b2", "b3", "b4", "b5"} & set(
            cloud.values()
        )
        assert boiler not in _entities(b), "the refused box got a downlink"
        assert _cloud_edge(w)[0] == a_id
        _assert_nothing_lost(w, boxes)

        # 4. the operator moves the edge to B
        assert box_b.stop() == 0
        assert cli(w.cloud.url, "edge", "reset-instance", EDGE, "--json") == {
            "edge_id": str(w.edge_id),
            "reset": True,
        }
        assert _cloud_edge(w)[:2] == (a_id, True)
        _restart(box_a)  # the old box, before the new one came: "was replaced"
        wait_until(lambda: "was replaced" in _error(w.edge), 20, what="A to be told it was replaced")
        assert _error(w.edge).startswith(
            f"FAILED_PRECONDITION: this box (instance {a_id}) was replaced: an operator ran "
            "`winstar edge reset-instance`; the cloud waits for the new box"
        )
        served, reset, conflict = _cloud_edge(w)
        assert (served, reset) == (a_id, True) and conflict.startswith(f"box {a_id} refused at ")
        # A off while B takes over (else A's next retry rewrites the conflict line first)
        assert box_a.stop() == 0

        synced_before = _config(b, "last_sync")
        box_b.start()
        wait_until(lambda: _cloud_edge(w)[0] == b_id, 20, what="B to become the edge")
        wait_until(lambda: _config(b, "last_sync") != synced_before, 20, what="B's full sync")
        wait_until(lambda: _in_cloud(w, made_b), 20, what="b1..b5 in the cloud")
        wait_until(lambda: _connected(b) and not _error(b), 20, what="B connected")
        wait_until(
            lambda: _uplink_ids(b, "PENDING") == set() and w.cloud_pending() == 0,
            20,
            what="everything acknowledged both ways",
        )
        expected = {f"a{i}" for i in range(1, 11)} | {f"b{i}" for i in range(1, 6)}
        assert sorted(_cloud_device_names(w)) == sorted(expected), "each device exactly once"
        assert set(made_b.values()) <= _uplink_ids(b, "DELIVERED")
        # B holds exactly what the cloud says the edge holds: A's devices, its own, the asset
        effective = _effective(w)
        assert effective == set(made_a.values()) | set(made_b.values()) | {boiler}
        wait_until(lambda: set(_entities(b)) == effective, 20, what="B to hold the edge's entities")
        shown = cli(w.cloud.url, "edge", "show", EDGE, "--json")
        assert shown["instance"] == b_id and shown["connected"] is True and shown["pending"] == 0
        assert shown["conflict"].startswith(f"moved from box {a_id} to box {b_id} at ")
        _assert_nothing_lost(w, boxes)

        # the old box goes on working, refused; what it makes after the move stays PENDING on it
        made_a |= _make(w.edge, "a11")
        box_a.start()
        wait_until(
            lambda: (
                f"another box (instance {b_id})" in _error(w.edge)
                and "(1 uplinks of this box not delivered" in _error(w.edge)
            ),
            20,
            what="A refused, counting its uplink",
        )
        st = cli(w.edge.url, "status", "--json")
        assert st["connected"] is False and st["pending_uplinks"] == 1 and st["instance"] == a_id
        assert st["error"].startswith(
            f"FAILED_PRECONDITION: another box (instance {b_id}) is using this edge's credentials; "
            f"this box is instance {a_id}."
        )
        assert st["error"].endswith(
            "(1 uplinks of this box not delivered: `winstar uplinks --status pending`)"
        )
        pending = cli(w.edge.url, "uplinks", "--status", "pending", "--json")
        assert [(u["action"], u["entity_id"]) for u in pending] == [("ADDED", str(made_a["a11"]))]
        assert made_a["a11"] not in _cloud_devices(w)
        served, reset, conflict = _cloud_edge(w)
        assert (served, reset) == (b_id, False)  # the old box did not take the edge back
        assert conflict.startswith(f"box {a_id} refused at ")
        assert conflict.endswith(f"another box ({b_id}) is the edge")

        # 5. after it all: B still holds its own devices (the sync did not remove them), and
        # nothing of either box is lost
        assert set(made_b.values()) <= set(_entities(b))
        assert set(_entities(b)) == _effective(w)
        _assert_nothing_lost(w, boxes)
    finally:
        b.close()


def test_the_same_box_restarted_is_served_and_two_processes_on_one_database_lose_nothing(world):
    w = world
    w.start_cloud()
    box = w.start_edge()
    w.wait_connected()
    a_id = _config(w.edge, "instance_id")
    made = _make(w.edge, "d1")
    wait_until(lambda: _in_cloud(w, made) and w.edge_pending() == 0, 20, what="d1 in the cloud")

    # the same box, restarted (same database, same place): the same instance, still the edge
    _restart(box)
    wait_until(lambda: _connected(w.edge) and not _error(w.edge), 20, what="the box to reconnect")
    made |= _make(w.edge, "d2")
    wait_until(lambda: _in_cloud(w, made) and w.edge_pending() == 0, 20, what="d2 in the cloud")
    assert _config(w.edge, "instance_id") == a_id
    assert _config(w.edge, "instance_copied_from") is None
    assert _cloud_edge(w) == (a_id, False, None)

    # two `winstar run` on one database file: one instance; they may flap, they must not lose
    twin = Proc(w.edge.url, w.tmp / "edge-twin.log")
    w.procs.append(twin.start())
    wait_until(lambda: "connected to" in twin.output(), 20, what="the second process to connect")
    boxes = {"A": (w.edge, made)}
    pump = w.cloud_do(lambda c: _assign_new_asset(c, "Pump"))
    for i in range(3, 13):  # over a few seconds: across the reconnects, if they flap
        made |= _make(w.edge, f"d{i}")
        _assert_nothing_lost(w, boxes)
        time.sleep(0.25)
    with contextlib.suppress(TimeoutError):  # flapping is acceptable; loss is not (checked below)
        wait_until(
            lambda: _in_cloud(w, made) and w.edge_pending() == 0 and pump in _entities(w.edge),
            5,
            what="everything through while both processes run",
        )
    _assert_nothing_lost(w, boxes)
    assert twin.stop() == 0, twin.output()[-2000:]
    # flapping backs the box off (up to 30 s): restart it to try at once, as an operator would
    _restart(box)

    wait_until(lambda: _in_cloud(w, made) and w.edge_pending() == 0, 20, what="every device in the cloud")
    wait_until(lambda: pump in _entities(w.edge), 20, what="the asset on the box")
    wait_until(lambda: w.cloud_pending() == 0, 20, what="every downlink acknowledged")
    assert sorted(_cloud_device_names(w)) == sorted(f"d{i}" for i in range(1, 13))
    _assert_nothing_lost(w, boxes)
    # one instance all along: never refused, never a conflict, never a new id
    assert _config(w.edge, "instance_id") == a_id
    assert _cloud_edge(w) == (a_id, False, None)
    wait_until(lambda: _connected(w.edge) and not _error(w.edge), 20, what="the box connected")
    for log in (box.output(), twin.output()):
        assert "Traceback" not in log and "FAILED_PRECONDITION" not in log, log[-3000:]


def test_the_moved_box_keeps_its_own_devices_when_its_sync_is_slower_than_their_ack(world):
    """The sync of a moved box takes some round trips (many entities; here: batches of one), its
    own uplinks one: B's devices are applied and acknowledged first, then B applies the SyncEnd."""
    w = world
    assets = w.cloud_do(lambda c: [_assign_new_asset(c, f"asset{i}") for i in range(20)])
    w.start_cloud("--batch-size", "1", "--max-in-flight", "1")
    box_a = w.start_edge()
    wait_until(lambda: set(assets) <= set(_entities(w.edge)), 30, what="the assets on box A")
    a_id = _config(w.edge, "instance_id")
    if box_a.stop() != 0:
        pytest.fail(box_a.output()[-2000:])
    url_b = _copy_box(w, w.tmp / "edge2.db")
    b = Node(url_b, platform=w.edge.platform)
    try:
        made_b = _make(b, "b1", "b2", "b3")
        w.cloud_do(lambda c: reset_instance(c.session, c.find_edge(EDGE)))
        w.procs.append(Proc(url_b, w.tmp / "edge2.log").start())
        wait_until(lambda: _cloud_edge(w)[0] not in (None, a_id), 20, what="B to become the edge")
        wait_until(
            lambda: _in_cloud(w, made_b) and not _uplink_ids(b, "PENDING") and w.cloud_pending() == 0,
            30,
            what="B's devices in the cloud and the sync delivered",
        )
        effective = _effective(w)
        if effective != set(assets) | set(made_b.values()):
            pytest.fail(f"the cloud's view of the edge is not what the test expects: {effective}")
        try:
            wait_until(lambda: set(_entities(b)) == effective, 3, what="B to hold the edge's entities")
        except TimeoutError:
            gone = sorted(n for n, i in made_b.items() if i not in _entities(b))
            raise AssertionError(
                f"box B's own devices {gone} were removed from B by its full sync; the cloud holds "
                "them and counts them as on the edge"
            ) from None
    finally:
        b.close()
