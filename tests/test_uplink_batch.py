"""The cloud's set-based apply of a batch of edge-created entities (store/rows.py): the rows, the
rules and the refusals are exactly those of applying each event on its own, on both databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from winstar_core import hookimpl
from winstar_core.errors import WinstarError
from winstar_core.plugin.api import EdgeCreation
from winstar_core.store.models import Assignment, Entity, EntityMember
from winstar_core.store.rows import buffer_of, insert_rows, write_queued
from winstar_core.testing import Kit

ENTITY = Entity.__table__


def _device(platform: Any, **data: Any) -> dict[str, Any]:
    return platform.types.get("device").validate(data)


def _rows(cloud: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Entities (without their times), assignments and memberships, in a stable order."""
    with cloud.db.read() as conn:
        entities = sorted(
            conn.execute(
                sa.select(
                    Entity.id,
                    Entity.tenant_id,
                    Entity.customer_id,
                    Entity.type,
                    Entity.name,
                    Entity.name_scope,
                    Entity.data,
                    Entity.version,
                    Entity.origin_edge_id,
                )
            ).all(),
            key=lambda r: (r.type, r.name),
        )
        assigned = sorted(conn.execute(sa.select(Assignment.edge_id, Assignment.entity_id)).all(), key=str)
        members = sorted(
            conn.execute(sa.select(EntityMember.container_id, EntityMember.member_id)).all(), key=str
        )
    return [tuple(r) for r in entities], [tuple(r) for r in assigned], [tuple(r) for r in members]


def _times_set(cloud: Any) -> bool:
    with cloud.db.read() as conn:
        return all(
            c and u and c == u
            for c, u in conn.execute(
                sa.select(Entity.created_time, Entity.updated_time).where(Entity.origin_edge_id.is_not(None))
            )
        )


@pytest.mark.parametrize("edition", ["ce", "pe"])
def test_a_batch_writes_what_one_event_at_a_time_writes(kit: Kit, db_url: str, tmp_path: Any, edition: str):
    """The same 40 devices applied as one batch (queued rows, one statement per table) and as 40
    batches of one event (the ORM, row by row) leave the same rows, rules applied alike."""
    ids = [uuid.uuid4() for _ in range(40)]
    datas = [_device(kit.platform, label=f"L{i}") for i in range(40)]  # one access token each, both runs
    results: list[tuple[Any, ...]] = []
    for mode, url in (("batch", db_url), ("one by one", None)):
        cloud = kit.cloud(edition, url=url)
        tenant = kit.tenant(cloud)
        edge = kit.edge(cloud, "Plant 7")
        events = kit.events(edge)
        batch = [events.added("device", f"dev-{i:02}", datas[i], entity_id=ids[i]) for i in range(40)]
        if mode == "batch":
            assert kit.apply_uplinks(cloud, edge, batch).ok
        else:
            for ev in batch:
                assert kit.apply_uplinks(cloud, edge, [ev]).ok
        entities, assigned, members = _rows(cloud)
        assert _times_set(cloud)
        # ids differ per database only for what the cloud made itself (PE: the edge's group)
        made = {r[0]: f"made-{r[4]}" for r in entities if r[0] not in ids}
        swap = {tenant.id: "tenant", edge.id: "edge", **made}

        def named(row: tuple[Any, ...], swap: dict[Any, str] = swap) -> tuple[Any, ...]:
            return tuple(swap.get(v, v) if isinstance(v, uuid.UUID) else v for v in row)

        results.append(
            (
                [named(r) for r in entities],
                sorted(named(r) for r in assigned),
                sorted(named(r) for r in members),
            )
        )
        downlinks = [(d.type, d.action) for d in kit.downlinks(cloud, edge)]
        results[-1] += (downlinks,)
    assert results[0] == results[1]
    entities, assigned, members, downlinks = results[0]
    assert len([r for r in entities if r[3] == "device"]) == 40
    if edition == "ce":
        assert len(assigned) == 40 and members == [] and downlinks == []
    else:  # PE: the devices join [Edge] Plant 7 All, which is assigned to the edge
        assert assigned == [("edge", "made-[Edge] Plant 7 All")]
        assert len(members) == 40
        assert downlinks == [("entity_group", "ADDED")] + [("entity_group", "MEMBER_ADDED")] * 40


def test_in_one_batch_a_new_entity_is_changed_and_another_deleted(kit: Kit, db_url: str):
    """Queued rows are written before anything the batch then reads: an UPDATED and a DELETED
    of entities created earlier in the same batch find them, and the outcome (entities,
    assignments, the events back to the edge) is that of applying the events one by one."""
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    data = [_device(kit.platform) for _ in range(3)] + [_device(kit.platform, label="new")]
    outcomes = []
    for mode, url in (("batch", db_url), ("one by one", None)):
        cloud = kit.cloud("ce", url=url)
        kit.tenant(cloud)
        edge = kit.edge(cloud, "E")
        ev = kit.events(edge)
        batch = [
            ev.added("device", "a", data[0], entity_id=a),
            ev.added("device", "b", data[1], entity_id=b),
            ev.added("device", "c", data[2], entity_id=c),
            ev.updated("device", a, "a2", data[3]),
            ev.deleted("device", b),
        ]
        if mode == "batch":
            assert kit.apply_uplinks(cloud, edge, batch).ok
        else:
            for one in batch:
                assert kit.apply_uplinks(cloud, edge, [one]).ok
        names = {e.name: e for e in kit.entities(cloud, "device")}
        assert sorted(names) == ["a2", "c"]
        assert names["a2"].data["label"] == "new"
        assert sorted(s.name for s in kit.edge_entities(cloud, edge)) == ["a2", "c"]
        outcomes.append([(d.type, d.action, d.entity_id) for d in kit.downlinks(cloud, edge)])
    assert outcomes[0] == outcomes[1]


def test_a_refused_event_in_a_batch_keeps_the_others_and_writes_nothing_of_its_own(kit: Kit, db_url: str):
    cloud = kit.cloud("ce", url=db_url)
    kit.tenant(cloud)
    edge = kit.edge(cloud, "E")
    ev = kit.events(edge)
    good = iter(range(5))
    batch = [
        ev.added("device", f"d{next(good)}", _device(kit.platform)),
        ev.added("device", f"d{next(good)}", _device(kit.platform)),
        ev.added("device", "bad", {"label": 5}),  # a number where text goes
        ev.added("device", f"d{next(good)}", _device(kit.platform)),
        ev.added("dashboard", "not an edge's to make", {}),
        ev.added("device", f"d{next(good)}", _device(kit.platform)),
        ev.added("device", f"d{next(good)}", _device(kit.platform)),
    ]
    delivery = kit.apply_uplinks(cloud, edge, batch)
    assert [v.ok for v in delivery.verdicts] == [True, True, False, True, False, True, True]
    assert "invalid device data" in delivery.verdicts[2].error
    assert sorted(e.name for e in kit.entities(cloud, "device")) == [f"d{i}" for i in range(5)]
    assert len(_rows(cloud)[1]) == 5  # one assignment each, none for the refused


class BothRule:
    """A third-party rule that makes the new entity a member of a group it creates, and assigns
    both the group and the entity itself (a fresh row referenced by two kinds of queued rows)."""

    @hookimpl(tryfirst=True)
    def winstar_edge_entity_created(self, created: EdgeCreation) -> Any:
        group = created.find_entity("entity_group", "made by rule", scope=created.entity.type)
        if group is None:
            group = created.create_entity(
                "entity_group", "made by rule", {"entity_type": created.entity.type}
            )
        created.add_member(group)
        created.assign(group)
        created.assign()
        return "both"


def test_a_rule_that_groups_and_assigns_a_fresh_entity(kit: Kit, db_url: str, make_platform: Any):
    platform = make_platform(BothRule())
    cloud = kit.cloud("ce", url=db_url, platform=platform)
    kit.tenant(cloud)
    edge = kit.edge(cloud, "E")
    ev = kit.events(edge)
    batch = [ev.added("device", f"d{i}", _device(platform)) for i in range(30)]
    assert kit.apply_uplinks(cloud, edge, batch).ok
    entities, assigned, members = _rows(cloud)
    group = next(r[0] for r in entities if r[3] == "entity_group")
    devices = {r[0] for r in entities if r[3] == "device"}
    assert len(devices) == 30
    assert set(assigned) == {(edge.id, group)} | {(edge.id, d) for d in devices}
    assert set(members) == {(group, d) for d in devices}
    # the edge learns the group and each membership; no device comes back to it
    kinds = [(d.type, d.action) for d in kit.downlinks(cloud, edge)]
    assert kinds == [("entity_group", "ADDED")] + [("entity_group", "MEMBER_ADDED")] * 30


def test_a_name_taken_by_a_queued_row_is_seen_by_the_next_event(kit: Kit, db_url: str):
    """Two new entities of one batch with one name: the second is renamed, as one by one."""
    cloud = kit.cloud("ce", url=db_url)
    kit.tenant(cloud)
    edge = kit.edge(cloud, "Plant")
    ev = kit.events(edge)
    batch = [ev.added("device", "twin", _device(kit.platform)) for _ in range(2)]
    assert kit.apply_uplinks(cloud, edge, batch).ok
    assert sorted(e.name for e in kit.entities(cloud, "device")) == ["twin", "twin (Plant)"]
    renamed = [d for d in kit.downlinks(cloud, edge) if d.action == "UPDATED"]
    assert len(renamed) == 1  # the cloud tells the edge the name it had to give


def test_queued_rows_are_written_before_any_read_and_dropped_on_rollback(kit: Kit, db_url: str):
    cloud = kit.cloud("ce", url=db_url)
    tenant = kit.tenant(cloud)
    now = 1
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.id,
            "customer_id": None,
            "type": "device",
            "name": f"q{i}",
            "name_scope": "",
            "data": {"label": "x", "nested": {"q": [1, 2.5, None, "é\"'\\"]}},
            "version": 1,
            "origin_edge_id": None,
            "created_time": now,
            "updated_time": now,
        }
        for i in range(3)
    ]
    with cloud.db.begin() as s:
        for r in rows:
            buffer_of(s).add(ENTITY, r)
        # a read through the session sees them: they were written first
        assert s.scalar(sa.select(sa.func.count()).select_from(Entity)) == 3
        assert write_queued(s) == 0
        buffer_of(s).add(ENTITY, {**rows[0], "id": uuid.uuid4(), "name": "later"})
        s.rollback()
    with cloud.db.read() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Entity)) == 0
        assert conn.scalar(sa.select(sa.func.count()).select_from(Entity)) == 0
    with cloud.db.begin() as s:
        insert_rows(s.connection(), ENTITY, rows)
    with cloud.db.read() as conn:
        stored = {r.name: r.data for r in conn.execute(sa.select(Entity.name, Entity.data))}
    assert stored == {r["name"]: r["data"] for r in rows}  # JSON, quotes and all, stored exactly


def test_a_name_the_cloud_holds_is_found_by_the_batch_look_up(kit: Kit, db_url: str):
    """The batch looks up who holds its names in one statement per type (PostgreSQL: one array,
    unprepared): a name held in the cloud renames the edge's entity, a name held in another
    scope or tenant does not."""
    cloud = kit.cloud("ce", url=db_url)
    kit.tenant(cloud)
    kit.tenant(cloud, "Other")
    kit.create(cloud, "device", "taken", tenant="Acme")
    kit.create(cloud, "device", "free elsewhere", tenant="Other")
    edge = kit.edge(cloud, "Plant", tenant="Acme")
    ev = kit.events(edge)
    batch = [ev.added("device", n, _device(kit.platform)) for n in ("taken", "free elsewhere", "it's \\ odd")]
    assert kit.apply_uplinks(cloud, edge, batch).ok
    names = sorted(s.name for s in kit.edge_entities(cloud, edge))
    assert names == ["free elsewhere", "it's \\ odd", "taken (Plant)"]


class GroupThenRefuseRule:
    """A rule that assigns group G to the edge and adds the new device to it, then refuses the
    devices named bad*: their savepoint is rolled back after G's assignment was read."""

    @hookimpl(tryfirst=True)
    def winstar_edge_entity_created(self, created: EdgeCreation) -> Any:
        group = created.find_entity("entity_group", "G", scope="device")
        if group is None:
            group = created.create_entity("entity_group", "G", {"entity_type": "device"})
        created.assign(group)
        created.add_member(group)
        if created.entity.name.startswith("bad"):
            raise WinstarError("refused by the rule")
        created.assign()
        return "grouped"


def test_a_refused_event_leaves_no_stale_answer_for_the_next(kit: Kit, db_url: str, make_platform: Any):
    """In the pass that applies each event in a savepoint, what a refused event read (G's edges,
    G itself) is not trusted by the next event: G ends assigned to the second edge too."""
    platform = make_platform(GroupThenRefuseRule())
    cloud = kit.cloud("ce", url=db_url, platform=platform)
    kit.tenant(cloud)
    e1, e2 = kit.edge(cloud, "E1"), kit.edge(cloud, "E2")
    dev = _device(platform)
    assert kit.apply_uplinks(cloud, e1, [kit.events(e1).added("device", "seed", dev)]).ok
    ev = kit.events(e2)
    delivery = kit.apply_uplinks(
        cloud, e2, [ev.added("device", "bad1", dev), ev.added("device", "good2", dev)]
    )
    assert [(v.ok, v.error) for v in delivery.verdicts] == [(False, "refused by the rule"), (True, "")]
    with cloud.db.read() as conn:
        group = conn.scalar(sa.select(Entity.id).where(Entity.name == "G"))
        edges = set(conn.scalars(sa.select(Assignment.edge_id).where(Assignment.entity_id == group)))
    assert edges == {e1.id, e2.id}
    kinds = [(d.type, d.action) for d in kit.downlinks(cloud, e2)]
    # E2 learns G (after its members, by the types' order) before any of its memberships
    assert kinds.index(("entity_group", "ADDED")) < kinds.index(("entity_group", "MEMBER_ADDED"))
