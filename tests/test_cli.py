"""The `winstar` command line: the commands and JSON shapes of CLI.md, and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from winstar_core.cli import build_cli
from winstar_core.node import Node


@pytest.fixture
def run(platform):
    cli = build_cli(platform)
    runner = CliRunner()

    def invoke(db: str, *args: str, ok: bool = True):
        result = runner.invoke(cli, ["--db", db, *args], catch_exceptions=False, prog_name="winstar")
        if ok:
            assert result.exit_code == 0, result.stderr or result.output
        return result

    def as_json(db: str, *args: str):
        return json.loads(invoke(db, *args, "--json").stdout)

    invoke.json = as_json  # type: ignore[attr-defined]
    invoke.runner, invoke.cli = runner, cli  # type: ignore[attr-defined]
    return invoke


def test_cloud_commands_and_shapes(run, db_url):
    j = run.json
    assert j(db_url, "init", "cloud")["role"] == "cloud"
    run(db_url, "init", "cloud")  # harmless again
    tenant = j(db_url, "tenant", "create", "Acme")
    assert set(tenant) == {"id", "name"}
    cust = j(db_url, "customer", "create", "Cust", "--tenant", "Acme")
    assert set(cust) == {"id", "name", "tenant_id"} and cust["tenant_id"] == tenant["id"]
    user = j(db_url, "user", "create", "a@acme.io", "--tenant", "Acme", "--authority", "TENANT_ADMIN")
    assert {"id", "email", "authority"} <= set(user)
    edge = j(db_url, "edge", "create", "e1", "--tenant", "Acme")
    assert {"id", "name", "routing_key", "secret"} <= set(edge)
    listed = j(db_url, "edge", "list")
    assert listed == [
        {
            "id": edge["id"],
            "name": "e1",
            "tenant_id": tenant["id"],
            "customer_id": None,
            "connected": False,
            "node": None,
            "last_seen": None,
            "pending": 0,
        }
    ]
    dash = j(db_url, "entity", "create", "dashboard", "Main", "--data", '{"title": "T"}')
    assert {k: dash[k] for k in ("type", "name", "tenant_id", "version", "data")} == {
        "type": "dashboard",
        "name": "Main",
        "tenant_id": tenant["id"],
        "version": 1,
        "data": {"title": "T", "configuration": {}},
    }
    assigned = j(db_url, "edge", "assign", "e1", "dashboard", "Main")
    assert assigned == {"edge_id": edge["id"], "entity_id": dash["id"], "type": "dashboard"}
    upd = j(db_url, "entity", "update", "dashboard", dash["id"], "--name", "Main2")
    assert (upd["name"], upd["version"]) == ("Main2", 2)
    assert j(db_url, "entity", "show", "dashboard", "Main2")["id"] == dash["id"]
    assert [e["name"] for e in j(db_url, "entity", "list", "dashboard")] == ["Main2"]
    ents = j(db_url, "edge", "entities", "e1")
    assert ents == [{"id": dash["id"], "type": "dashboard", "name": "Main2", "version": 2}]
    downs = j(db_url, "edge", "downlinks", "e1")
    # newest first; the update superseded the unsent ADDED and travels as the entity's ADDED
    assert [(d["action"], d["status"]) for d in downs] == [("ADDED", "pending"), ("ADDED", "superseded")]
    assert set(downs[0]) == {
        "seq",
        "created_time",
        "type",
        "action",
        "entity_id",
        "status",
        "delivered_time",
        "error",
    }
    assert j(db_url, "edge", "downlinks", "e1", "--status", "delivered") == []
    superseded = j(db_url, "edge", "downlinks", "e1", "--status", "superseded")
    assert [d["error"] for d in superseded] == [f"superseded by seq {downs[0]['seq']}"]
    assert j(db_url, "edge", "sync", "e1")["requested"] is True
    status = j(db_url, "status")
    assert status["role"] == "cloud" and status["edition"] == "ce"
    assert status["edges"][0]["pending"] == 1 and status["edges"][0]["connected"] is False
    # groups, from the groups plugin
    j(db_url, "entity", "create", "device", "d1")
    grp = j(db_url, "entity", "create", "entity_group", "G", "--data", '{"entity_type": "device"}')
    added = j(db_url, "group", "add", "G", "device", "d1")
    assert added["group_id"] == grp["id"]
    assert [m["name"] for m in j(db_url, "group", "members", "G")] == ["d1"]
    j(db_url, "group", "remove", "G", "device", "d1")
    assert j(db_url, "group", "members", "G") == []
    gone = j(db_url, "entity", "delete", "dashboard", "Main2")
    assert gone == {"id": dash["id"], "deleted": True}
    # without --json: a readable table
    assert "NAME" in run(db_url, "edge", "list").stdout


def test_pe_roles(run, sqlite_url):
    j = run.json
    j(sqlite_url, "init", "cloud", "--edition", "pe")
    j(sqlite_url, "tenant", "create", "Acme")
    role = j(sqlite_url, "role", "create", "writer", "--tenant", "Acme", "--permission", "DEVICE:WRITE")
    assert role["permissions"] == ["DEVICE:WRITE"] and {"id", "name"} <= set(role)
    j(sqlite_url, "customer", "create", "C")
    user = j(
        sqlite_url,
        "user",
        "create",
        "w@acme.io",
        "--authority",
        "CUSTOMER_USER",
        "--customer",
        "C",
        "--role",
        "writer",
    )
    assert user["roles"] == ["writer"] and user["permissions"] == ["DEVICE:WRITE"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("entity", "create", "gizmo", "x"), "unknown entity type 'gizmo'"),
        (("entity", "create", "device", "d1"), "already exists"),
        (("entity", "create", "device", "d2", "--data", "{nope"), "not valid JSON"),
        (("entity", "create", "device", "d2", "--data", '{"label": 5}'), "invalid device data"),
        (("edge", "assign", "e1", "device", "nope"), "no device 'nope'"),
        (("edge", "assign", "nope", "device", "d1"), "no edge 'nope'"),
        (("uplinks",), "is for an edge node"),
        (("role", "create", "r", "--permission", "DEVICE:WRITE"), "only on a PE cloud"),
        (("user", "create", "x@acme.io", "--authority", "CUSTOMER_USER"), "needs --customer"),
        (("edge", "unassign", "e1", "device", "d1"), "is not assigned"),
        (("group", "add", "G", "asset", "a1"), "does not hold"),
        (("group", "remove", "G", "device", ""), "no device ''"),
        (("run", "--listen", "127.0.0.1:99999"), "the port must be 0-65535"),  # gRPC would wrap it
        (("init", "edge", "--cloud", "h:0", "--routing-key", "k", "--secret", "s"), "port must be 1-65535"),
        # names and emails fit their columns on every database (SQLite would not check)
        (("tenant", "create", "t" * 256), "at most 255 characters, this one has 256"),
        (("edge", "create", "e" * 300), "at most 255 characters"),
        (("entity", "create", "asset", "a" * 256), "at most 255 characters"),
        (("entity", "update", "device", "d1", "--name", "n" * 256), "at most 255 characters"),
        (("user", "create", "u" * 250 + "@acme.io", "--authority", "TENANT_ADMIN"), "at most 255"),
        (("entity", "create", "asset", "a2", "--data", "@/nonexistent/a2.json"), "cannot read it"),
        (("entity", "create", "asset", "a2", "--data", '{"label": "a\\u0000b"}'), "NUL character"),
        (("entity", "update", "asset", "a1", "--data", '{"additional_info": {"k\\u0000": 1}}'), "NUL"),
        (("entity", "create", "asset", "a2", "--data", '{"additional_info": {"x": 1e400}}'), "(inf)"),
        (("entity", "create", "asset", "a2", "--data", '{"additional_info": {"x": NaN}}'), "(nan)"),
        (("entity", "create", "asset", "a2", "--data", '{"label": "\\ud800"}'), "lone surrogate"),
        (("tenant", "create", "bad\udcffbyte"), "not valid UTF-8 text"),
        (("entity", "show", "asset", "a\udcff"), "argument 'a\\udcff' is not valid UTF-8 text"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(run, db_url, args, message):
    j = run.json
    j(db_url, "init", "cloud")
    j(db_url, "tenant", "create", "Acme")
    j(db_url, "edge", "create", "e1")
    j(db_url, "entity", "create", "device", "d1")
    j(db_url, "entity", "create", "asset", "a1")
    j(db_url, "entity", "create", "entity_group", "G", "--data", '{"entity_type": "device"}')
    snapshot = _snapshot(db_url)
    result = run(db_url, *args, ok=False)
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert result.stdout == ""
    assert _snapshot(db_url) == snapshot


@pytest.mark.parametrize(
    "args, message",
    [
        (("bogus",), "No such command 'bogus'. (see 'winstar --help')"),
        (("--bogus",), "No such option '--bogus'"),
        (("entity", "create"), "Missing argument 'TYPE'. (see 'winstar entity create --help')"),
        (("edge", "downlinks", "e1", "--status", "nope"), "'nope' is not one of"),
        (("edge", "retry", "e1", "99999999999999999999999"), "is not in the range"),
    ],
)
def test_usage_mistakes_are_one_line_too(run, sqlite_url, args, message):
    run(sqlite_url, "init", "cloud")
    run(sqlite_url, "tenant", "create", "Acme")
    run(sqlite_url, "edge", "create", "e1")
    result = run(sqlite_url, *args, ok=False)
    err = result.stderr.strip()
    assert result.exit_code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert result.stdout == ""


def test_data_from_a_file_or_stdin_and_its_size_limit(run, db_url, tmp_path):
    from winstar_core.entity_types import MAX_DATA_BYTES

    j = run.json
    j(db_url, "init", "cloud")
    j(db_url, "tenant", "create", "Acme")
    doc = tmp_path / "dash.json"
    doc.write_text(json.dumps({"title": "from a file", "configuration": {"blob": "x" * 100_000}}))
    made = j(db_url, "entity", "create", "dashboard", "D", "--data", f"@{doc}")
    assert made["data"]["title"] == "from a file" and len(made["data"]["configuration"]["blob"]) == 100_000
    cli_input = json.dumps({"title": "from stdin"})
    changed = json.loads(
        run.runner.invoke(
            run.cli,
            ["--db", db_url, "entity", "update", "dashboard", "D", "--data", "-", "--json"],
            input=cli_input,
        ).stdout
    )
    assert changed["data"]["title"] == "from stdin" and changed["version"] == 2
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"configuration": {"blob": "x" * MAX_DATA_BYTES}}))
    snapshot = _snapshot(db_url)
    for args in (("create", "dashboard", "Big"), ("update", "dashboard", "D")):
        result = run(db_url, "entity", *args, "--data", f"@{big}", ok=False)
        err = result.stderr.strip()
        assert result.exit_code == 1 and len(err.splitlines()) == 1, err
        assert "larger than the 4,194,304 an entity may hold" in err, err
    assert _snapshot(db_url) == snapshot


def _snapshot(url: str):
    import sqlalchemy as sa

    node = Node(url)
    out = {}
    with node.db.engine.connect() as conn:
        for table in sorted(sa.inspect(conn).get_table_names()):
            out[table] = sorted(map(repr, conn.execute(sa.text(f'SELECT * FROM "{table}"'))))
    node.close()
    return out


def test_edge_commands(run, platform, tmp_path, sqlite_url):
    from winstar_core.testing import seed_edge_from_cloud

    j = run.json
    j(sqlite_url, "init", "cloud")
    j(sqlite_url, "tenant", "create", "Acme")
    j(sqlite_url, "user", "create", "a@acme.io", "--authority", "TENANT_ADMIN")
    edge = j(sqlite_url, "edge", "create", "e1")
    edge_db = f"sqlite:///{tmp_path / 'edge.db'}"
    j(
        edge_db,
        "init",
        "edge",
        "--cloud",
        "127.0.0.1:7070",
        "--routing-key",
        edge["routing_key"],
        "--secret",
        edge["secret"],
    )
    st = j(edge_db, "status")
    assert {k: st[k] for k in ("role", "connected", "cloud", "pending_uplinks", "last_sync")} == {
        "role": "edge",
        "connected": False,
        "cloud": "127.0.0.1:7070",
        "pending_uplinks": 0,
        "last_sync": None,
    }
    assert "error" in st
    refused = run(edge_db, "entity", "create", "device", "d1", "--user", "a@acme.io", ok=False)
    assert refused.exit_code == 1 and "has not connected to its cloud yet" in refused.stderr
    assert run(edge_db, "edge", "list", ok=False).exit_code == 1  # a cloud command on an edge
    assert run(edge_db, "init", "cloud", ok=False).exit_code == 1

    seed_edge_from_cloud(Node(sqlite_url, platform=platform), Node(edge_db, platform=platform), "e1")
    dev = j(edge_db, "entity", "create", "device", "d1", "--user", "a@acme.io")
    assert dev["type"] == "device" and dev["tenant_id"] == edge["tenant_id"]
    ups = j(edge_db, "uplinks")
    assert [(u["type"], u["action"], u["entity_id"], u["status"]) for u in ups] == [
        ("device", "ADDED", dev["id"], "pending")
    ]
    assert j(edge_db, "status")["pending_uplinks"] == 1
    no_dash = run(edge_db, "entity", "create", "dashboard", "D", "--user", "a@acme.io", ok=False)
    assert "cannot be created on an edge" in no_dash.stderr
    assert j(edge_db, "entity", "update", "device", "d1", "--data", '{"label": "L"}')["version"] == 2
    # the update superseded the unsent ADDED: it goes up as the device's ADDED, with its data
    assert [(u["action"], u["status"]) for u in j(edge_db, "uplinks")] == [
        ("ADDED", "pending"),
        ("ADDED", "superseded"),
    ]


def test_the_services_refuse_what_the_database_could_not_store(cloud_node):
    """The same limits hold for a caller of the services (a plugin, a script), not only the CLI."""
    from winstar_core.errors import WinstarError

    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
    for make in (
        lambda c: c.create_tenant("bad\udcff"),
        lambda c: c.create_tenant("nul\x00"),
        lambda c: c.create_edge("e" * 256, t),
        lambda c: c.create_entity("asset", "a", t, {"additional_info": {"x": float("nan")}}),
        lambda c: c.create_entity("asset", "a", t, {"additional_info": {"\x00": 1}}),
    ):
        with pytest.raises(WinstarError), cloud_node.cloud() as c:
            make(c)
    with cloud_node.cloud() as c:
        assert [x.name for x in c.list_tenants()] == ["Acme"]
        assert c.list_edges() == [] and c.entities.list_entities("asset") == []


_ODD = st.sampled_from(
    [
        "",
        " ",
        "x" * 300,
        "Acme",
        "e1",
        "d1",
        "G",
        "device",
        "asset",
        "entity_group",
        "nope",
        "-",
        "0",
        "99999999999999999999999",
        "{}",
        "[]",
        '{"label": 5}',
        '{"x": NaN}',
        "a\udcffb",
        "💥",
        "'; DROP TABLE entity; --",
        "00000000-0000-0000-0000-000000000000",
        "pending",
        "TENANT_ADMIN",
        "DEVICE:WRITE",
    ]
)
_COMMANDS = [
    ("tenant", "create", 0),
    ("customer", "create", 0, "--tenant", 1),
    ("edge", "create", 0, "--tenant", 1),
    ("user", "create", 0, "--authority", 1),
    ("entity", "create", 0, 1, "--data", 2),
    ("entity", "update", 0, 1, "--name", 2),
    ("entity", "update", 0, 1, "--data", 2),
    ("entity", "delete", 0, 1),
    ("entity", "show", 0, 1),
    ("entity", "list", 0, "--tenant", 1),
    ("edge", "assign", 0, 1, 2),
    ("edge", "unassign", 0, 1, 2),
    ("edge", "entities", 0),
    ("edge", "downlinks", 0, "--status", 1),
    ("edge", "sync", 0),
    ("edge", "retry", 0, 1),
    ("group", "add", 0, 1, 2),
    ("group", "remove", 0, 1, 2),
    ("group", "members", 0),
    ("uplinks", "--status", 0),
    ("init", "edge", "--cloud", 0, "--routing-key", 1, "--secret", 2),
]


@settings(
    max_examples=examples(300, thorough=600),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    command=st.sampled_from(_COMMANDS),
    values=st.lists(st.one_of(_ODD, _ODD, _ODD, st.text(max_size=20)), min_size=3, max_size=3),
    as_json=st.booleans(),
)
# what it found once, kept as examples
@example(command=("group", "remove", 0, 1, 2), values=["G", "device", ""], as_json=False)
@example(command=("edge", "retry", 0, 1), values=["e1", "99999999999999999999999", ""], as_json=True)
@example(command=("entity", "create", 0, 1, "--data", 2), values=["asset", "a", '{"x": NaN}'], as_json=False)
def test_no_argument_makes_a_traceback(run, sqlite_url, command, values, as_json):
    """Whatever the arguments: exit 0, or one line on stderr with exit 1 (refused) or 2 (not
    understood), never an exception out of the command."""
    if not Node(sqlite_url).role():
        run.json(sqlite_url, "init", "cloud")
        run.json(sqlite_url, "tenant", "create", "Acme")
        run.json(sqlite_url, "edge", "create", "e1")
        run.json(sqlite_url, "entity", "create", "device", "d1")
        run.json(sqlite_url, "entity", "create", "entity_group", "G", "--data", '{"entity_type": "device"}')
    args = [values[a] if isinstance(a, int) else a for a in command] + (["--json"] if as_json else [])
    result = run.runner.invoke(run.cli, ["--db", sqlite_url, *args], prog_name="winstar")
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code)
    if result.exit_code:
        err = result.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("Error: "), (args, err)
    elif as_json:
        json.loads(result.stdout)  # exactly one JSON value
