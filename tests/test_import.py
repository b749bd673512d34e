"""`winstar entity import`: bulk provisioning from JSON Lines, all or nothing, and exactly the rows
that creating and assigning the entities one by one writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from procs import wait_until

from winstar_core.services import bulk, bulk_lines
from winstar_core.services.bulk import ImportRefused, import_entities
from winstar_core.store import outbox
from winstar_core.store.models import Assignment, Edge, EdgeEvent, Entity
from winstar_core.transport.pb import sync_pb2 as pb


def jsonl(*lines: object) -> str:
    """JSON Lines: each value dumped, a string taken as it is (a line that is no JSON)."""
    return "".join((v if isinstance(v, str) else json.dumps(v)) + "\n" for v in lines)


def device(name: str, n: int = 0) -> dict:
    """A device line; an explicit token, so that two runs store the same data."""
    return {"name": name, "data": {"label": f"L{n}", "credentials": {"access_token": f"tok-{n}"}}}


@pytest.fixture
def cloud(kit, db_url):
    """A CE cloud on ``db_url`` with tenant Acme and edges e1, e2."""
    node = kit.cloud(url=db_url)
    kit.tenant(node, "Acme")
    kit.edge(node, "e1")
    kit.edge(node, "e2")
    return node


def write(tmp_path, text: str | bytes, name: str = "in.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def snapshot(node) -> dict[str, list[str]]:
    """Every row of every table: what "nothing written" is compared with."""
    out = {}
    with node.db.engine.connect() as conn:
        for table in sorted(sa.inspect(conn).get_table_names()):
            out[table] = sorted(map(repr, conn.execute(sa.text(f'SELECT * FROM "{table}"'))))
    return out


def refused(kit, node, *args: str, input: str | bytes | None = None) -> list[str]:
    """Run an import that must be refused with nothing written; its stderr lines."""
    before = snapshot(node)
    result = kit.cli(node, "entity", "import", *args, ok=False, input=input)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert snapshot(node) == before
    return result.stderr.strip().splitlines()


def test_an_import_with_assign_queues_one_added_per_entity(kit, cloud, tmp_path):
    names = [f"dev-{i:03}" for i in range(30)]
    path = write(tmp_path, jsonl(*(device(n, i) for i, n in enumerate(names))))
    out = kit.json(cloud, "entity", "import", "device", path, "--assign", "e1")
    assert out == {"created": 30, "assigned": 30}
    by_name = {e.name: e for e in kit.entities(cloud, "device")}
    assert sorted(by_name) == names and {e.version for e in by_name.values()} == {1}
    assert by_name["dev-007"].data["credentials"]["access_token"] == "tok-7"
    downlinks = kit.downlinks(cloud, "e1")
    assert [(d.seq, d.type, d.action, d.status) for d in downlinks] == [
        (i + 1, "device", "ADDED", "pending") for i in range(30)
    ]
    assert [d.entity_id for d in downlinks] == [by_name[n].id for n in names]  # file order
    assert {e.name for e in kit.edge_entities(cloud, "e1")} == set(names)
    assert kit.downlinks(cloud, "e2") == [] and kit.edge_entities(cloud, "e2") == []


def test_the_human_form_is_one_line(kit, cloud, tmp_path):
    path = write(tmp_path, jsonl(device("a"), device("b", 1)))
    result = kit.cli(cloud, "entity", "import", "device", path, "--assign", "e1", "--assign", "e2")
    assert result.stdout.strip() == "created 2 device entities, 4 assignments"


def _rows(node, tenant: str) -> dict[str, list]:
    """A tenant's entities, assignments and downlinks, ids and times left out (entities named)."""
    with node.db.read() as conn:
        tenant_id = conn.scalar(sa.text("SELECT id FROM tenant WHERE name = :n"), {"n": tenant})
        tenant_id = uuid.UUID(str(tenant_id))
        entities = conn.execute(sa.select(Entity).where(Entity.tenant_id == tenant_id)).all()
        names = {e.id: e.name for e in entities}
        edges = {e.id: e.name for e in conn.execute(sa.select(Edge).where(Edge.tenant_id == tenant_id))}
        assignments = conn.execute(sa.select(Assignment).where(Assignment.edge_id.in_(list(edges)))).all()
        events = conn.execute(
            sa.select(EdgeEvent).where(EdgeEvent.edge_id.in_(list(edges))).order_by(EdgeEvent.seq)
        ).all()
    out_events = []
    for ev in events:
        state = pb.EntityState.FromString(ev.body)
        assert state.id == str(ev.entity_id) and state.tenant_id == str(tenant_id)
        state.id, state.tenant_id = names[ev.entity_id], ""
        out_events.append(
            (edges[ev.edge_id], ev.seq, ev.type, ev.action, names[ev.entity_id], ev.status, state)
            + (ev.tenant_id == tenant_id, ev.delivered_time, ev.error, ev.retried_as, ev.created_time > 0)
        )
    return {
        "entities": sorted(
            (e.type, e.name, e.name_scope, json.dumps(e.data, sort_keys=True), e.version)
            + (e.customer_id, e.origin_edge_id, e.created_time == e.updated_time, e.created_time > 0)
            for e in entities
        ),
        "assignments": sorted(
            (edges[a.edge_id], names[a.entity_id], a.created_time > 0) for a in assignments
        ),
        "events": sorted(out_events, key=lambda r: (r[0], r[1])),
    }


@pytest.mark.parametrize(
    "type_name, lines",
    [
        ("device", [device(f"d{i}", i) for i in range(12)] + [{"name": "  padded  ", "data": {}}]),
        (
            "entity_group",  # a container: its name scope is its member type
            [{"name": "G", "data": {"entity_type": t}} for t in ("device", "asset", "dashboard")]
            + [{"name": f"G{i}", "data": {"entity_type": "device", "description": "x"}} for i in range(5)],
        ),
    ],
)
@pytest.mark.parametrize("chunk_lines", [500, 3])
def test_an_import_writes_exactly_what_creating_and_assigning_one_by_one_writes(
    kit, db_url, tmp_path, monkeypatch, type_name, lines, chunk_lines
):
    """PostgreSQL: the entities, assignments and downlinks COPYd; SQLite: executemany. In one
    chunk, and in chunks of 3 lines."""
    monkeypatch.setattr(bulk_lines, "CHUNK_LINES", chunk_lines)
    node = kit.cloud(url=db_url)
    for tenant in ("Bulk", "OneByOne"):
        kit.tenant(node, tenant)
        kit.edge(node, f"{tenant}-a", tenant)
        kit.edge(node, f"{tenant}-b", tenant)
    if type_name == "device":  # a device without an explicit token gets a random one: give one
        lines[-1]["data"] = {"credentials": {"access_token": "padded"}}
    path = write(tmp_path, jsonl(*lines))
    out = kit.json(
        node,
        "entity",
        "import",
        type_name,
        path,
        "--tenant",
        "Bulk",
        "--assign",
        "Bulk-a",
        "--assign",
        "Bulk-b",
    )
    assert out == {"created": len(lines), "assigned": 2 * len(lines)}
    assert_same_as_one_by_one(kit, node, type_name, lines)


def assert_same_as_one_by_one(kit, node, type_name: str, lines: list[dict]) -> None:
    """Tenant Bulk holds what ``lines`` imported and assigned to its edges -a and -b; create and
    assign them one by one in tenant OneByOne, and compare every row."""
    for line in lines:
        made = kit.create(node, type_name, line["name"], line["data"], tenant="OneByOne")
        kit.assign(node, "OneByOne-a", type_name, made)
        kit.assign(node, "OneByOne-b", type_name, made)
    imported, one_by_one = _rows(node, "Bulk"), _rows(node, "OneByOne")
    renamed = {
        "entities": one_by_one["entities"],
        "assignments": [(e.replace("OneByOne", "Bulk"), *r) for e, *r in one_by_one["assignments"]],
        "events": [(r[0].replace("OneByOne", "Bulk"), *r[1:]) for r in one_by_one["events"]],
    }
    assert imported == renamed
    assert len(imported["events"]) == 2 * len(lines)


#: ``winstar entity import`` in a process of its own (one thread: it may fork its checkers), in
#: chunks of 3 lines checked by 2 worker processes whatever the cores; says how many checked
WORKERS_SCRIPT = """
import sys
from winstar_core.services import bulk, bulk_lines
bulk_lines.CHUNK_LINES = 3
bulk_lines.worker_count = lambda: 2
run = bulk.BulkImport.run
def spy(self, *args, **kwargs):
    try:
        return run(self, *args, **kwargs)
    finally:
        print(f"workers={self.workers}", file=sys.stderr)
bulk.BulkImport.run = spy
from winstar_core.cli import main
main()
"""


def import_in_a_process(node, *args: str, before: str = "") -> subprocess.CompletedProcess[str]:
    """``winstar entity import ARGS`` by :data:`WORKERS_SCRIPT`, ``before`` run first."""
    return subprocess.run(
        [sys.executable, "-c", before + WORKERS_SCRIPT, "entity", "import", *args],
        env={**os.environ, "WINSTAR_DB": node.url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_lines_checked_by_worker_processes_write_exactly_the_same_rows(kit, db_url, tmp_path):
    node = kit.cloud(url=db_url)
    for tenant in ("Bulk", "OneByOne"):
        kit.tenant(node, tenant)
        kit.edge(node, f"{tenant}-a", tenant)
        kit.edge(node, f"{tenant}-b", tenant)
    lines = [device(f"d{i:02}", i) for i in range(20)]
    args = ["device", write(tmp_path, jsonl(*lines)), "--tenant", "Bulk"]
    done = import_in_a_process(node, *args, "--assign", "Bulk-a", "--assign", "Bulk-b", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"created": 20, "assigned": 40}
    assert "workers=2" in done.stderr
    assert [d.seq for d in kit.downlinks(node, "Bulk-a")] == list(range(1, 21))
    assert_same_as_one_by_one(kit, node, "device", lines)


def test_worker_processes_name_every_bad_line_and_write_nothing(kit, cloud, tmp_path):
    lines: list[object] = [device(f"d{i}", i) for i in range(20)]
    lines[4], lines[13] = "{oops", {"name": "d1", "data": {}}
    before = snapshot(cloud)
    done = import_in_a_process(cloud, "device", write(tmp_path, jsonl(*lines)), "--assign", "e1")
    assert done.returncode == 1 and "workers=2" in done.stderr
    assert done.stderr.splitlines()[1:3] == [
        "line 5: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        "line 14: name 'd1' is already used on line 2",
    ]
    assert snapshot(cloud) == before


def test_a_worker_process_that_dies_fails_the_import_and_nothing_is_written(kit, cloud, tmp_path):
    """Killed (out of memory, say) while checking the third chunk: the import stops with an
    error instead of waiting for ever for that chunk, and what it wrote is rolled back."""
    die = (
        "import os\nfrom winstar_core.services import bulk_lines\nreal = bulk_lines.LineCheck.chunk\n"
        "bulk_lines.LineCheck.chunk = lambda self, first, raws: os._exit(9) if first == 7 else real(self, first, raws)\n"
    )
    before = snapshot(cloud)
    path = write(tmp_path, jsonl(*(device(f"d{i}", i) for i in range(20))))
    done = import_in_a_process(cloud, "device", path, "--assign", "e1", before=die)
    assert done.returncode != 0 and "BrokenProcessPool" in done.stderr
    assert snapshot(cloud) == before


@pytest.mark.parametrize("where", ["entities", "downlinks"])
def test_a_failure_in_the_middle_of_the_write_writes_nothing(kit, cloud, tmp_path, monkeypatch, where):
    """Chunks of 5 lines: the entities of the first chunks are written when the failure comes.
    ``entities``: a name the check missed (a create between the check and the write) breaks the
    unique index in the fourth chunk's COPY (executemany on SQLite); ``downlinks``: the rows of
    the events fail half way (after the first edge's, on SQLite)."""
    monkeypatch.setattr(bulk_lines, "CHUNK_LINES", 5)
    kit.create(cloud, "device", "d17")
    lines = [device(f"d{i}", i) for i in range(30) if i != 17 or where == "entities"]
    if where == "entities":
        monkeypatch.setattr(bulk.BulkImport, "_taken", lambda self, good: [])
    else:
        real_tuples, real_rows = outbox._tuples, outbox._rows

        def tuples(*args):
            for i, row in enumerate(real_tuples(*args)):
                if i == 40:
                    raise RuntimeError("the write breaks")
                yield row

        calls = []

        def rows(*args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("the write breaks")
            return real_rows(*args)

        monkeypatch.setattr(outbox, "_tuples", tuples)
        monkeypatch.setattr(outbox, "_rows", rows)
    before = snapshot(cloud)
    path = write(tmp_path, jsonl(*lines))
    with pytest.raises(Exception, match="the write breaks|unique|UNIQUE"):
        kit.cli(cloud, "entity", "import", "device", path, "--assign", "e1", "--assign", "e2")
    assert snapshot(cloud) == before
    monkeypatch.undo()
    lines = [device(f"d{i}", i) for i in range(30) if i != 17]
    out = kit.json(cloud, "entity", "import", "device", write(tmp_path, jsonl(*lines), "again.jsonl"))
    assert out == {"created": 29, "assigned": 0}  # the database and its pool work on


def test_a_refusal_after_chunks_were_written_leaves_the_transaction_as_it_was(kit, cloud, monkeypatch):
    """The bad line comes after three chunks were written: the caller's transaction goes on,
    and commits none of them."""
    monkeypatch.setattr(bulk_lines, "CHUNK_LINES", 4)
    before = snapshot(cloud)
    lines = jsonl(*(device(f"d{i}", i) for i in range(14)), {"name": "bad", "data": {"label": 1}})
    with cloud.cloud() as svc:
        with pytest.raises(ImportRefused) as refusal:
            import_entities(svc, "device", lines.encode().splitlines(True), assign=["e1"])
        assert refusal.value.problems == ["line 15: invalid device data: label: Not a valid string."]
    assert snapshot(cloud) == before


def test_one_notify_names_the_edges_of_an_import(kit, pg_url, tmp_path):
    import psycopg

    node = kit.cloud(url=pg_url)
    kit.tenant(node, "Acme")
    ids = sorted(str(kit.edge(node, name).id) for name in ("e1", "e2"))
    dsn = sa.engine.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN winstar_downlink")
        path = write(tmp_path, jsonl(*(device(f"d{i}", i) for i in range(30))))
        kit.cli(node, "entity", "import", "device", path, "--assign", "e1", "--assign", "e2")
        heard = [n.payload for n in listener.notifies(timeout=1.0)]
    assert heard == [",".join(ids)]


def test_one_bad_line_among_many_writes_nothing_and_every_bad_line_is_named(kit, cloud, tmp_path):
    lines: list[object] = [device(f"d{i}", i) for i in range(60)]
    lines[6] = "{not json"
    lines[22] = {"name": "d22", "data": {"label": 5}}
    lines[40] = {"name": "d40", "data": [1, 2]}
    lines[59] = {"data": {}}
    err = refused(kit, cloud, "device", write(tmp_path, jsonl(*lines)), "--assign", "e1")
    assert err[:-1] == [
        "line 7: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        "line 23: invalid device data: label: Not a valid string.",
        'line 41: "data" must be a JSON object, not an array',
        'line 60: no "name"',
    ]
    assert err[-1] == "Error: 4 problems in 60 lines: nothing imported"


def test_names_repeated_in_the_file_are_refused(kit, cloud, tmp_path):
    text = jsonl(device("a"), device("b", 1), device("c", 2), device(" a ", 3), device("b", 4))
    err = refused(kit, cloud, "device", write(tmp_path, text))
    assert err[:-1] == [
        "line 4: name 'a' is already used on line 1",
        "line 5: name 'b' is already used on line 2",
    ]


def test_a_name_repeated_in_another_scope_is_no_repeat(kit, cloud, tmp_path):
    text = jsonl(*({"name": "G", "data": {"entity_type": t}} for t in ("device", "asset")))
    assert kit.json(cloud, "entity", "import", "entity_group", write(tmp_path, text)) == {
        "created": 2,
        "assigned": 0,
    }
    again = jsonl(
        {"name": "G", "data": {"entity_type": "dashboard"}}, {"name": "G", "data": {"entity_type": "asset"}}
    )
    err = refused(kit, cloud, "entity_group", write(tmp_path, again, "again.jsonl"))
    assert err[:-1] == ["line 2: a entity_group named 'G' (scope 'asset') already exists in this tenant"]


def test_a_name_taken_in_the_tenant_is_refused(kit, cloud, tmp_path):
    kit.create(cloud, "device", "taken")
    other = kit.tenant(cloud, "Other")
    kit.create(cloud, "device", "elsewhere", tenant=other)  # another tenant's name is free here
    text = jsonl(device("free"), device("taken", 1), device("elsewhere", 2))
    err = refused(kit, cloud, "device", write(tmp_path, text), "--tenant", "Acme")
    assert err[:-1] == ["line 2: a device named 'taken' already exists in this tenant"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("nope", "line 2: not valid JSON: Expecting value (column 1)"),
        ('{"name": "x"', "line 2: not valid JSON: Expecting ',' delimiter (column 13)"),
        ("[1, 2]", 'line 2: not a JSON object ({"name": ..., "data": {...}}) but an array'),
        ('"x"', 'line 2: not a JSON object ({"name": ..., "data": {...}}) but a string'),
        ('{"name": "x", "data": null}', 'line 2: "data" must be a JSON object, not null'),
        ('{"name": "x", "data": "{}"}', 'line 2: "data" must be a JSON object, not a string'),
        ('{"name": "x", "data": 7}', 'line 2: "data" must be a JSON object, not a number'),
        ('{"name": 7}', 'line 2: "name" must be a string'),
        ('{"name": "  "}', "line 2: an entity needs a non-empty name"),
        (
            '{"name": "' + "n" * 256 + '"}',
            "line 2: an entity's name may be at most 255 characters, this one has 256",
        ),
        ('{"name": "x", "dta": {}}', 'line 2: unknown key \'dta\': a line holds "name" and "data"'),
        ('{"name": "x", "data": {"label": 5}}', "line 2: invalid device data: label: Not a valid string."),
        ('{"name": "x", "data": {"colour": "red"}}', "line 2: invalid device data: colour: Unknown field."),
        (
            '{"name": "x", "data": {"label": "a\\u0000b"}}',
            "line 2: device data may not contain the NUL character (\\u0000)",
        ),
        (
            '{"name": "x", "data": {"additional_info": {"v": NaN}}}',
            "line 2: device data may not contain a number JSON cannot write (nan)",
        ),
        ('{"name": "x\\ud800"}', "line 2: an entity's name is not valid UTF-8 text: 'x\\ud800'"),
        (
            '{"name": "x", "data": {"additional_info": ' + "[" * 70 + "]" * 70 + "}}",
            "line 2: invalid device data: it holds objects or arrays nested more than 64 levels deep",
        ),
    ],
)
def test_a_bad_line_is_named_with_what_is_wrong(kit, cloud, tmp_path, line, message):
    text = jsonl(device("ok"), line, device("ok2", 2))
    err = refused(kit, cloud, "device", write(tmp_path, text))
    assert err == [message, "Error: 1 problem in 3 lines: nothing imported"]


def test_bytes_that_are_not_utf8_are_a_bad_line(kit, cloud, tmp_path):
    err = refused(kit, cloud, "device", write(tmp_path, b'{"name": "a"}\n{"name": "\xff"}\n'))
    assert err[0] == "line 2: not UTF-8 text (invalid start byte at byte 10)"


def test_a_group_whose_data_its_type_rejects(kit, cloud, tmp_path):
    err = refused(kit, cloud, "entity_group", write(tmp_path, jsonl({"name": "G", "data": {}})))
    assert err[0] == "line 1: invalid entity_group data: entity_type: Missing data for required field."


def test_an_unknown_edge_is_refused_with_the_bad_lines(kit, cloud, tmp_path):
    other = kit.tenant(cloud, "Other")
    kit.edge(cloud, "theirs", other)
    path = write(tmp_path, jsonl(device("a"), "oops"))
    err = refused(
        kit,
        cloud,
        "device",
        path,
        "--tenant",
        "Acme",
        "--assign",
        "e1",
        "--assign",
        "nope",
        "--assign",
        "theirs",
    )
    assert err == [
        "--assign nope: no edge 'nope' in tenant 'Acme'",
        "--assign theirs: no edge 'theirs' in tenant 'Acme'",  # another tenant's edge
        "line 2: not valid JSON: Expecting value (column 1)",
        "Error: 3 problems in 2 lines: nothing imported",
    ]


def test_an_edge_named_twice_is_assigned_once(kit, cloud, tmp_path):
    path = write(tmp_path, jsonl(device("a")))
    out = kit.json(cloud, "entity", "import", "device", path, "--assign", "e1", "--assign", "e1")
    assert out == {"created": 1, "assigned": 1}
    assert len(kit.downlinks(cloud, "e1")) == 1


def test_an_unknown_type_is_one_line(kit, cloud, tmp_path):
    err = refused(kit, cloud, "gizmo", write(tmp_path, jsonl({"name": "a"})))
    assert err == ["Error: unknown entity type 'gizmo' (known: asset, dashboard, device, entity_group)"]


def test_a_missing_file_is_one_line(kit, cloud, tmp_path):
    err = refused(kit, cloud, "device", str(tmp_path / "missing.jsonl"))
    assert len(err) == 1 and err[0].startswith("Error: cannot read") and "No such file" in err[0]


def test_stdin_and_blank_lines(kit, cloud):
    text = "\n" + jsonl(device("a")) + "   \n\r\n" + jsonl({"name": "b"})
    out = kit.cli(cloud, "entity", "import", "device", "-", "--assign", "e2", "--json", input=text).json
    assert out == {"created": 2, "assigned": 2}
    assert [e.name for e in kit.entities(cloud, "device")] == ["a", "b"]
    err = refused(kit, cloud, "device", "-", input="\n\n" + jsonl(device("c"), device("a")))
    assert err[0] == "line 4: a device named 'a' already exists in this tenant"


def test_an_empty_file_imports_nothing(kit, cloud, tmp_path):
    before = snapshot(cloud)
    out = kit.json(cloud, "entity", "import", "device", write(tmp_path, ""), "--assign", "e1")
    assert out == {"created": 0, "assigned": 0}
    assert snapshot(cloud) == before


def test_on_an_edge_database_it_is_one_line(kit, tmp_path):
    cloud = kit.cloud()
    kit.tenant(cloud)
    edge = kit.edge_node(cloud, kit.edge(cloud, "e1"))
    err = refused(kit, edge, "device", "-", input=jsonl(device("a")))
    assert err == ["Error: winstar entity import is for a cloud node, and this database is an edge node"]


# -- random lines ------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
DATA = st.fixed_dictionaries(
    {},
    optional={
        "label": st.none() | st.text(max_size=8) | st.integers(),
        "device_profile": st.text(max_size=8),
        "additional_info": JSON,
        "credentials": st.fixed_dictionaries({}, optional={"type": st.sampled_from(["ACCESS_TOKEN", "X"])}),
    },
)
LINE = st.one_of(
    st.text(max_size=30),  # anything at all
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
    JSON.map(json.dumps),
    st.fixed_dictionaries({"name": st.text(max_size=12) | JSON, "data": DATA | JSON}).map(json.dumps),
    st.fixed_dictionaries({"name": st.text(min_size=1, max_size=12), "data": DATA}).map(json.dumps),
    st.just(""),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=8))
@example(lines=['{"name": "same"}', '{"name": "same"}'])
@example(lines=['{"name": "\\ud800x"}'])
def test_random_lines_are_a_clean_import_or_a_clean_numbered_refusal(kit, cloud, lines):
    raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    with cloud.db.read() as conn:
        count = conn.scalar(sa.select(sa.func.count()).select_from(Entity))
    before = snapshot(cloud)
    result = kit.cli(cloud, "entity", "import", "device", "-", "--assign", "e1", "--json", ok=None, input=raw)
    assert "Traceback" not in result.stderr
    if result.ok:
        out = json.loads(result.stdout)
        with cloud.db.read() as conn:
            assert conn.scalar(sa.select(sa.func.count()).select_from(Entity)) == count + out["created"]
        assert out["assigned"] == out["created"]
    else:
        assert result.exit_code == 1 and result.stdout == ""
        err = result.stderr.strip().splitlines()
        assert err[-1].startswith("Error: ") and "nothing imported" in err[-1]
        assert err[:-1] and all(line.startswith("line ") for line in err[:-1])
        assert snapshot(cloud) == before


# -- a real edge ---------------------------------------------------------------------------------------


def test_a_connected_edge_receives_the_imported_entities(kit, linked, tmp_path):
    names = {f"imported-{i}" for i in range(200)}
    path = write(tmp_path, jsonl(*(device(n, i) for i, n in enumerate(sorted(names)))))
    assert kit.json(linked.cloud, "entity", "import", "device", path, "--assign", "edge") == {
        "created": 200,
        "assigned": 200,
    }

    def on_edge():
        with linked.edge.db.read() as conn:
            return set(conn.scalars(sa.select(Entity.name).where(Entity.type == "device")))

    wait_until(lambda: on_edge() == names, what="the imported devices on the edge")
    wait_until(lambda: {d.status for d in kit.downlinks(linked.cloud, "edge")} == {"delivered"})


def test_lines_a_reader_would_misread_are_refused_by_number(kit, tmp_path):
    """A repeated key (its last value would win silently), a line longer than any entity's data
    (never held whole), and a byte-order mark before the first line (read as nothing)."""
    from winstar_core.services.bulk_lines import MAX_LINE_BYTES

    cloud = kit.cloud()
    kit.tenant(cloud)
    f = tmp_path / "in.jsonl"
    with f.open("wb") as fh:
        fh.write(b'\xef\xbb\xbf{"name": "bom-ok", "data": {}}\n')
        fh.write(b'{"name": "one", "name": "two", "data": {}}\n')
        fh.write(b'{"name": "big", "data": {"x": "' + b"a" * (MAX_LINE_BYTES + 10) + b'"}}\n')
        fh.write(b'{"name": "fine", "data": {}}\n')
    out = kit.cli(cloud, "entity", "import", "asset", str(f), ok=False)
    assert "line 2: the key 'name' appears twice in one object" in out.stderr
    assert f"line 3: longer than {MAX_LINE_BYTES:,} bytes" in out.stderr
    assert "line 1" not in out.stderr and "line 4" not in out.stderr
    assert kit.entities(cloud, "asset") == []  # nothing written
    f.write_bytes(b'\xef\xbb\xbf{"name": "bom-ok", "data": {}}\n')
    assert kit.json(cloud, "entity", "import", "asset", str(f)) == {"created": 1, "assigned": 0}
