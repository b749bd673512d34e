"""End to end: real `winstar run` processes over loopback gRPC. The cloud runs on SQLite and on
PostgreSQL; the edge on SQLite."""

from __future__ import annotations

import uuid

import pytest
from e2e_world import _tenant
from procs import Proc, cli, wait_until

from winstar_core.node import Node
from winstar_core.services.common import get_config

pytestmark = pytest.mark.slow


def test_cloud_to_edge_flows_online(world):
    w = world
    w.start_cloud()
    w.start_edge()
    w.wait_connected()
    edge_of = w.edge_entities

    dash = w.cloud_do(lambda c: c.create_entity("dashboard", "Overview", _tenant(c), {"title": "v1"}))
    w.cloud_do(lambda c: c.assign(c.find_edge("Plant 7"), c.entities.find_entity("dashboard", "Overview")))
    wait_until(lambda: dash.id in edge_of(), what="the assigned dashboard on the edge (same id)")

    w.cloud_do(
        lambda c: c.update_entity(c.entities.find_entity("dashboard", "Overview"), data={"title": "v2"})
    )
    wait_until(lambda: edge_of().get(dash.id, (None, None, 0))[2] == 2, what="the update")
    with w.edge.edge() as e:
        assert e.entities.find_entity("dashboard", str(dash.id)).data["title"] == "v2"

    def make_group(c):
        t = _tenant(c)
        g = c.create_entity("entity_group", "Sensors", t, {"entity_type": "device"})
        c.add_member(g, c.create_entity("device", "s1", t))
        c.assign(c.find_edge("Plant 7"), g)
        return g

    group = w.cloud_do(make_group)
    wait_until(lambda: {"Sensors", "s1"} <= {n for _, n, _ in edge_of().values()}, what="group and members")
    s2 = w.cloud_do(lambda c: c.create_entity("device", "s2", _tenant(c)))
    w.cloud_do(
        lambda c: c.add_member(
            c.entities.find_entity("entity_group", "Sensors"), c.entities.find_entity("device", "s2")
        )
    )
    wait_until(lambda: s2.id in edge_of(), what="a member added later")
    w.cloud_do(
        lambda c: c.remove_member(
            c.entities.find_entity("entity_group", "Sensors"), c.entities.find_entity("device", "s1")
        )
    )
    wait_until(
        lambda: "s1" not in {n for _, n, _ in edge_of().values()}, what="a removed member leaves the edge"
    )

    # unassign: gone, unless still assigned through the group
    w.cloud_do(lambda c: c.assign(c.find_edge("Plant 7"), c.entities.find_entity("device", "s2")))
    w.cloud_do(lambda c: c.unassign(c.find_edge("Plant 7"), c.entities.find_entity("device", "s2")))
    w.cloud_do(lambda c: c.unassign(c.find_edge("Plant 7"), c.entities.find_entity("dashboard", "Overview")))
    wait_until(lambda: dash.id not in edge_of(), what="unassigned dashboard removed")
    assert s2.id in edge_of() and group.id in edge_of()

    # delete
    w.cloud_do(lambda c: c.delete_entity(c.entities.find_entity("device", "s2")))
    wait_until(lambda: s2.id not in edge_of(), what="deleted device removed")

    wait_until(lambda: w.cloud_pending() == 0, what="every downlink acknowledged")
    downs = cli(w.cloud.url, "edge", "downlinks", "Plant 7", "--json")
    assert downs and {d["status"] for d in downs} == {"delivered"}
    assert all(d["delivered_time"] for d in downs)
    assert [d["seq"] for d in downs] == sorted((d["seq"] for d in downs), reverse=True)
    status = cli(w.cloud.url, "status", "--json")
    assert status["edges"][0]["connected"] is True and status["edges"][0]["pending"] == 0


def test_edge_created_devices_online_and_offline(world):
    w = world
    w.start_cloud()
    w.start_edge()
    w.wait_connected()
    made = cli(w.edge.url, "entity", "create", "device", "Thermo", "--user", "admin@acme.io", "--json")
    dev_id = uuid.UUID(made["id"])

    def in_cloud_and_assigned():
        with w.cloud.cloud() as c:
            return dev_id in {e.id for e in c.effective_entities(c.find_edge("Plant 7"))}

    wait_until(in_cloud_and_assigned, what="the edge's device in the cloud, assigned to its edge (CE)")
    wait_until(lambda: w.edge_pending() == 0)
    ups = cli(w.edge.url, "uplinks", "--json")
    assert [(u["action"], u["status"]) for u in ups] == [("ADDED", "delivered")]

    # cut the link (stop the cloud): the edge keeps working and queues
    assert w.cloud_proc.stop() == 0  # SIGTERM: a clean stop
    wait_until(lambda: not w.edge_connected(), what="the edge to notice the cloud is gone")
    for i in range(5):
        cli(w.edge.url, "entity", "create", "device", f"offline-{i}", "--user", "admin@acme.io")
    st = cli(w.edge.url, "status", "--json")
    assert st["pending_uplinks"] == 5
    # assign while the edge is offline (the cloud process is down too: the CLI writes the outbox)
    w.cloud_do(lambda c: c.assign(c.find_edge("Plant 7"), c.create_entity("asset", "Boiler", _tenant(c))))
    w.start_cloud()
    wait_until(lambda: w.edge_pending() == 0, what="queued devices delivered after the link is back")
    with w.cloud.cloud() as c:
        names = {e.name for e in c.effective_entities(c.find_edge("Plant 7"))}
    assert {f"offline-{i}" for i in range(5)} | {"Thermo", "Boiler"} <= names
    wait_until(lambda: "Boiler" in {n for _, n, _ in w.edge_entities().values()}, what="offline assignment")

    # the edge process offline now; assignments made meanwhile reach it later
    wait_until(lambda: w.cloud_pending() == 0)
    assert w.edge_proc.stop() == 0
    w.cloud_do(lambda c: c.assign(c.find_edge("Plant 7"), c.create_entity("dashboard", "Late", _tenant(c))))
    pending = cli(w.cloud.url, "edge", "downlinks", "Plant 7", "--status", "pending", "--json")
    assert [d["type"] for d in pending] == ["dashboard"]
    w.start_edge()
    wait_until(
        lambda: "Late" in {n for _, n, _ in w.edge_entities().values()}, what="assignment made while offline"
    )


def test_pe_story_edge_all_group(pe_world):
    w = pe_world
    w.start_cloud()
    w.start_edge()
    w.wait_connected()
    for name in ("a", "b"):
        cli(w.edge.url, "entity", "create", "device", name, "--user", "admin@acme.io")
    wait_until(lambda: w.edge_pending() == 0)
    with w.cloud.cloud() as c:
        groups = c.entities.list_entities("entity_group")
        assert [g.name for g in groups] == ["[Edge] Plant 7 All"]
        assert [m.name for m in c.members(groups[0])] == ["a", "b"]
    wait_until(
        lambda: "[Edge] Plant 7 All" in {n for _, n, _ in w.edge_entities().values()}, what="group on edge"
    )
    members = cli(w.edge.url, "group", "members", "[Edge] Plant 7 All", "--json")
    assert sorted(m["name"] for m in members) == ["a", "b"]


def test_name_collision_resolved_on_both_sides(world):
    w = world
    w.cloud_do(lambda c: c.create_entity("device", "pump", _tenant(c)))
    w.start_cloud()
    w.start_edge()
    w.wait_connected()
    made = cli(w.edge.url, "entity", "create", "device", "pump", "--user", "admin@acme.io", "--json")
    dev_id = uuid.UUID(made["id"])
    wait_until(
        lambda: w.edge_entities().get(dev_id, ("", "", 0))[1] == "pump (Plant 7)", what="the edge agrees"
    )
    with w.cloud.cloud() as c:
        assert sorted(d.name for d in c.entities.list_entities("device")) == ["pump", "pump (Plant 7)"]
        assert c.entities.find_entity("device", str(dev_id)).name == "pump (Plant 7)"


def test_rejected_events_fail_with_reason_and_do_not_block(world):
    from winstar_core.services.common import ADDED, entity_state
    from winstar_core.store.outbox import OutboxEvent

    w = world
    w.start_cloud()
    w.start_edge()
    w.wait_connected()

    def bad_then_good(c):
        t = _tenant(c)
        edge = c.find_edge("Plant 7")
        good1 = c.create_entity("asset", "before", t)
        c.assign(edge, good1)
        bogus = c.create_entity("asset", "bogus", t)
        state = entity_state(bogus, c.types)
        state.payload = b'{"label": 42, "nonsense": true}'  # a payload the edge's schema refuses
        c.outbox.downlink(edge.id, OutboxEvent(t.id, "asset", ADDED, bogus.id, state.SerializeToString()))
        c.assign(edge, c.create_entity("asset", "after", t))
        return bogus.id

    bogus_id = w.cloud_do(bad_then_good)
    wait_until(lambda: w.cloud_pending() == 0, what="all downlinks answered")
    downs = cli(w.cloud.url, "edge", "downlinks", "Plant 7", "--json")
    by_entity = {(d["entity_id"], d["status"]) for d in downs}
    failed = [d for d in downs if d["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["entity_id"] == str(bogus_id)
    assert "invalid asset data" in failed[0]["error"] and "label" in failed[0]["error"]
    assert sum(1 for _, s in by_entity if s == "delivered") == 2
    assert {"before", "after"} <= {n for _, n, _ in w.edge_entities().values()}
    assert cli(w.cloud.url, "edge", "downlinks", "Plant 7", "--status", "failed", "--json") == failed

    # a forged uplink (a dashboard is not creatable on an edge) is refused by the cloud, same way
    def forge(e):
        d = e.entities.insert(
            type_name="dashboard", name="forged", tenant_id=e.tenant_id, data={}, origin_edge_id=e.edge_id
        )
        e._uplink(d, ADDED)

    with w.edge.edge() as e:
        forge(e)
    cli(w.edge.url, "entity", "create", "device", "legit", "--user", "admin@acme.io")
    wait_until(lambda: w.edge_pending() == 0)
    ups = cli(w.edge.url, "uplinks", "--json")
    assert [(u["type"], u["status"]) for u in ups] == [("device", "delivered"), ("dashboard", "failed")]
    assert "cannot be created or changed on an edge" in ups[1]["error"]
    with w.cloud.cloud() as c:
        assert [d.name for d in c.entities.list_entities("dashboard")] == []


def test_wrong_secret_is_refused_and_the_rightful_edge_stays(world):
    w = world
    w.start_cloud()
    w.start_edge()
    w.wait_connected()
    impostor = Node(f"sqlite:///{w.tmp / 'impostor.db'}", platform=w.edge.platform)
    impostor.init_edge(f"127.0.0.1:{w.port}", w.routing_key, "not-the-secret")
    p = Proc(impostor.url, w.tmp / "impostor.log").start()
    w.procs.append(p)

    def refused():
        st = cli(impostor.url, "status", "--json")
        return st if st["error"] and "UNAUTHENTICATED" in st["error"] else None

    st = wait_until(refused, what="the impostor's status to say why it is refused")
    assert st["connected"] is False and "invalid routing key or secret" in st["error"]
    assert w.edge_connected()
    made = cli(w.edge.url, "entity", "create", "device", "still-fine", "--user", "admin@acme.io", "--json")
    wait_until(lambda: w.edge_pending() == 0, what="the rightful edge keeps syncing")
    with w.cloud.cloud() as c:
        assert c.entities.find_entity("device", made["id"]).name == "still-fine"
        assert c.find_edge("Plant 7").connected
    # the impostor learned nothing: no config, no users
    with impostor.db.begin() as s:
        assert get_config(s, "edge_id") is None
    impostor.close()
