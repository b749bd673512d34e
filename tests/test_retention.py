"""Retention, dismissing and pruning: what `winstar prune`, `winstar edge dismiss`, `winstar
dismiss` and the pruning of `winstar run` keep and delete, on both databases; one node of a cloud
prunes at a time; a duration is read or refused in one line."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from procs import Proc, free_port, wait_until, winstar

from winstar_core.errors import WinstarError
from winstar_core.node import Node
from winstar_core.services.common import get_config
from winstar_core.services.retention import (
    MAX_DURATION_MS,
    PRUNE_INTERVAL_ENV,
    oldest_prunable,
    parse_duration,
    prune,
    remember_retention,
    take_prune_lock,
)
from winstar_core.store.models import (
    DELIVERED,
    DISMISSED,
    FAILED,
    HELD,
    PENDING,
    SUPERSEDED,
    CloudEvent,
    EdgeEvent,
    now_ms,
)

SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
TENANT = uuid.uuid4()


# -- helpers ---------------------------------------------------------------------------------------


def put(node: Node, model, rows, edge_id: uuid.UUID | None = None) -> None:
    """Outbox rows ``(seq, status, delivered_time)`` as the link leaves them."""
    extra = {"edge_id": edge_id} if edge_id is not None else {}
    with node.db.begin() as s:
        for seq, status, delivered in rows:
            s.add(
                model(
                    seq=seq,
                    tenant_id=TENANT,
                    type="asset",
                    action="ADDED",
                    body=b"",
                    status=status,
                    delivered_time=delivered,
                    error="refused by the receiver" if status == FAILED else None,
                    **extra,
                )
            )


def state(node: Node, model, edge_id: uuid.UUID | None = None) -> dict[int, str]:
    """seq -> status of the outbox (of one edge's stream, for the cloud's)."""
    stmt = sa.select(model.seq, model.status).order_by(model.seq)
    if edge_id is not None:
        stmt = stmt.where(model.edge_id == edge_id)
    with node.db.read() as conn:
        return {int(seq): status for seq, status in conn.execute(stmt)}


def snapshot(node: Node) -> tuple:
    """Everything a refused command could have changed."""
    with node.db.read() as conn:
        return tuple(
            tuple(map(tuple, conn.execute(sa.select(m.seq, m.status, m.delivered_time).order_by(m.seq))))
            for m in (EdgeEvent, CloudEvent)
        ) + (conn.scalar(sa.text("SELECT value FROM node_config WHERE key = 'retention'")),)


def every_status(now: int) -> list[tuple[int, str, int | None]]:
    """One event of each status delivered (or failed) 10 days ago, seqs 1-6, and one of each
    prunable status delivered an hour ago, seqs 7-9."""
    old, young = now - 10 * DAY, now - HOUR
    return [
        (1, PENDING, None),
        (2, HELD, None),
        (3, FAILED, old),  # a FAILED event carries the time of its verdict: never pruned all the same
        (4, DELIVERED, old),
        (5, SUPERSEDED, old),
        (6, DISMISSED, old),
        (7, DELIVERED, young),
        (8, SUPERSEDED, young),
        (9, DISMISSED, young),
    ]


KEPT = {1: PENDING, 2: HELD, 3: FAILED, 7: DELIVERED, 8: SUPERSEDED, 9: DISMISSED}


@pytest.fixture
def cloud(kit, cloud_node):
    """A CE cloud (on SQLite, then PostgreSQL) with tenant Acme and edges e1 and e2."""
    kit.tenant(cloud_node)
    kit.edge(cloud_node, "e1")
    kit.edge(cloud_node, "e2")
    return cloud_node


def edge_id(node: Node, name: str) -> uuid.UUID:
    with node.cloud() as c:
        return c.find_edge(name).id


def one_line_refusal(result, exit_code: int, message: str) -> None:
    err = result.stderr.strip()
    assert result.exit_code == exit_code, (result.args, result.exit_code, err)
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and message in err, err
    assert "Traceback" not in err and result.stdout == ""


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ms",
    [
        ("7d", 7 * DAY),
        ("12h", 12 * HOUR),
        ("30m", 30 * MINUTE),
        ("90s", 90 * SECOND),
        ("2w", 14 * DAY),
        ("1h30m", 90 * MINUTE),
        (" 7D ", 7 * DAY),
        ("0s", 0),
        ("36500d", MAX_DURATION_MS),
    ],
)
def test_a_duration_is_a_number_and_a_unit(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is not a duration"),
        ("7", "is not a duration"),
        ("d", "is not a duration"),
        ("1.5h", "is not a duration"),
        ("7 days", "is not a duration"),
        ("\u0663d", "is not a duration"),  # an Arabic-Indic 3: digits are 0-9
        ("-1d", "is negative"),
        ("36501d", "is too long"),
        ("9" * 5000 + "d", "is not a duration"),
    ],
)
def test_anything_else_is_refused_in_one_line(text, message):
    with pytest.raises(WinstarError) as caught:
        parse_duration(text)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert len(str(caught.value)) < 200  # the text quoted is cut short


_UNITS = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
_DURATION_LIKE = st.from_regex(r"\A-?[0-9]{0,14}[smhdwx ]?([0-9]{1,3}[smhd])?\Z")


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=30), _DURATION_LIKE))
@example(text="0x10s")
@example(text="1h-30m")
def test_any_text_is_a_duration_or_one_clean_error(text):
    try:
        ms = parse_duration(text)
    except WinstarError as exc:
        assert len(str(exc).splitlines()) == 1 and str(exc)
        return
    parts = re.findall(r"([0-9]+)([smhdw])", text.strip().lower())
    assert re.fullmatch(r"(?:[0-9]+[smhdw])+", text.strip().lower())
    assert ms == sum(int(n) * _UNITS[u] for n, u in parts) and 0 <= ms <= MAX_DURATION_MS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=20), _DURATION_LIKE), as_json=st.booleans())
def test_prune_older_than_anything_is_done_or_one_line(kit, sqlite_url, text, as_json):
    if not Node(sqlite_url).role():
        kit.cli(sqlite_url, "init", "cloud")
    args = ["prune", "--older-than", text] + (["--json"] if as_json else [])
    result = kit.cli(sqlite_url, *args, ok=None)
    if result.exit_code == 0:
        assert not as_json or result.json == {"deleted": 0}
    else:
        one_line_refusal(result, 2, "--older-than")


# -- pruning keeps what is not done, and what is young ----------------------------------------------


def test_prune_deletes_only_old_delivered_superseded_and_dismissed_downlinks(kit, cloud):
    e1, e2 = edge_id(cloud, "e1"), edge_id(cloud, "e2")
    now = now_ms()
    put(cloud, EdgeEvent, every_status(now), e1)
    put(cloud, EdgeEvent, every_status(now), e2)
    assert kit.json(cloud, "prune", "--older-than", "1d") == {"deleted": 6}  # 3 of each edge
    assert state(cloud, EdgeEvent, e1) == KEPT
    assert state(cloud, EdgeEvent, e2) == KEPT
    # a shorter retention reaches the young ones; PENDING, HELD and FAILED stay whatever their age
    # (but for the newest sent event of each stream, kept to notice a box restored from a backup)
    out = kit.cli(cloud, "prune", "--older-than", "30m")
    assert out.stdout.strip() == "deleted 4 delivered, superseded or dismissed event(s) older than 30m"
    assert state(cloud, EdgeEvent, e1) == {1: PENDING, 2: HELD, 3: FAILED, 9: DISMISSED}


def test_prune_on_an_edge_deletes_its_old_uplinks(kit, edge_node):
    put(edge_node, CloudEvent, every_status(now_ms()))
    assert kit.json(edge_node, "prune", "--older-than", "1d") == {"deleted": 3}
    assert state(edge_node, CloudEvent) == KEPT
    assert kit.json(edge_node, "prune", "--older-than", "1d") == {"deleted": 0}  # nothing left to do


def test_prune_goes_batch_by_batch_through_both_outboxes(cloud):
    e1 = edge_id(cloud, "e1")
    old = now_ms() - 2 * DAY
    put(cloud, EdgeEvent, [(seq, DELIVERED, old + seq) for seq in range(1, 12)], e1)
    put(cloud, CloudEvent, [(seq, DISMISSED, old + seq) for seq in range(1, 6)] + [(6, FAILED, old)])
    assert prune(cloud.db, DAY, batch=3) == 15  # each stream keeps its newest sent event
    assert state(cloud, EdgeEvent) == {11: DELIVERED} and state(cloud, CloudEvent) == {6: FAILED}


def test_a_halted_prune_stops_between_batches(cloud):
    e1 = edge_id(cloud, "e1")
    put(cloud, EdgeEvent, [(seq, DELIVERED, seq) for seq in range(1, 11)], e1)
    halt = threading.Event()
    halt.set()
    assert prune(cloud.db, DAY, batch=2, halt=halt) == 0
    assert len(state(cloud, EdgeEvent)) == 10


def test_prune_defaults_to_the_retention_run_was_started_with(kit, cloud):
    e1 = edge_id(cloud, "e1")
    now = now_ms()
    put(cloud, EdgeEvent, [(1, DELIVERED, now - 8 * DAY), (2, DELIVERED, now - 6 * DAY)], e1)
    put(cloud, EdgeEvent, [(3, DELIVERED, now - 2 * HOUR), (4, DELIVERED, now - 30 * MINUTE)], e1)
    assert kit.json(cloud, "prune") == {"deleted": 1}  # none configured: 7 days
    assert state(cloud, EdgeEvent) == {2: DELIVERED, 3: DELIVERED, 4: DELIVERED}
    remember_retention(cloud.db, "1h")  # what `winstar run --retention 1h` records
    assert kit.json(cloud, "prune") == {"deleted": 2}
    assert state(cloud, EdgeEvent) == {4: DELIVERED}


def test_the_prune_query_walks_the_partial_index(cloud):
    """On a big outbox a batch must cost the rows it deletes: both planners pick ``ix_*_prunable``
    (PostgreSQL told not to scan, since these tables are small)."""
    for model, index in ((EdgeEvent, "ix_edge_event_prunable"), (CloudEvent, "ix_cloud_event_prunable")):
        # compiled as it runs, with bound values: SQLite's planner matches a partial index to
        # what it can read in the query's text, not to the values bound later
        with cloud.db.engine.connect() as conn:
            query = oldest_prunable(model, now_ms(), 5000).compile(
                dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
            )
            if cloud.db.is_postgres:
                conn.exec_driver_sql("SET enable_seqscan = off")
                rows = conn.exec_driver_sql(f"EXPLAIN {query}", query.params)
                plan = "\n".join(str(row[0]) for row in rows)
            else:
                params = tuple(query.params[name] for name in query.positiontup or ())
                plan = "\n".join(
                    str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}", params)
                )
        assert index in plan, plan


# -- dismissing ------------------------------------------------------------------------------------


def test_edge_dismiss_marks_failed_downlinks_of_that_edge_only(kit, cloud):
    e1, e2 = edge_id(cloud, "e1"), edge_id(cloud, "e2")
    long_ago = now_ms() - 30 * DAY
    rows = [(1, FAILED, long_ago), (2, FAILED, long_ago), (3, FAILED, long_ago), (4, DELIVERED, long_ago)]
    put(cloud, EdgeEvent, [*rows, (5, PENDING, None)], e1)
    put(cloud, EdgeEvent, [(1, FAILED, long_ago)], e2)
    before = now_ms()

    # SEQs: only the FAILED ones count; the human output names the others
    out = kit.cli(cloud, "edge", "dismiss", "e1", "2", "4", "5", "99")
    assert out.stdout.splitlines() == [
        "dismissed 1 failed event(s)",
        "not failed, left as they are (not counted): 4, 5, 99",
    ]
    assert kit.json(cloud, "edge", "dismiss", "e1", "2") == {"dismissed": 0}  # dismissed already
    # no SEQ: every FAILED of that edge's stream
    assert kit.json(cloud, "edge", "dismiss", "e1") == {"dismissed": 2}
    assert state(cloud, EdgeEvent, e1) == {1: DISMISSED, 2: DISMISSED, 3: DISMISSED, 4: DELIVERED, 5: PENDING}
    assert state(cloud, EdgeEvent, e2) == {1: FAILED}  # another edge's stream is not touched

    shown = kit.json(cloud, "edge", "downlinks", "e1", "--status", "dismissed")
    assert [(d["seq"], d["status"], d["error"]) for d in shown] == [
        (3, "dismissed", "refused by the receiver"),
        (2, "dismissed", "refused by the receiver"),
        (1, "dismissed", "refused by the receiver"),
    ]
    assert set(shown[0]) == {
        "seq",
        "created_time",
        "type",
        "action",
        "entity_id",
        "status",
        "delivered_time",
        "error",
    }
    with cloud.db.read() as conn:  # their retention runs from the dismissal, not the failure
        stamps = conn.execute(
            sa.select(EdgeEvent.delivered_time).where(EdgeEvent.edge_id == e1, EdgeEvent.status == DISMISSED)
        ).scalars()
        assert all(t >= before for t in stamps)
    # nothing: the dismissed ones are young, the old delivered one is its stream's newest sent
    assert kit.json(cloud, "prune", "--older-than", "1d") == {"deleted": 0}
    assert kit.json(cloud, "edge", "show", "e1")["failed"] == 0
    assert kit.json(cloud, "edge", "show", "e2")["failed"] == 1


def test_dismiss_on_an_edge_marks_failed_uplinks(kit, edge_node):
    put(edge_node, CloudEvent, [(1, FAILED, 1), (2, FAILED, 1), (3, DELIVERED, 1), (4, HELD, None)])
    assert kit.json(edge_node, "dismiss", "1", "3", "4") == {"dismissed": 1}
    assert state(edge_node, CloudEvent) == {1: DISMISSED, 2: FAILED, 3: DELIVERED, 4: HELD}
    out = kit.cli(edge_node, "dismiss")
    assert out.stdout.splitlines() == ["dismissed 1 failed event(s)"]
    statuses = {u["seq"]: u["status"] for u in kit.json(edge_node, "uplinks")}
    assert statuses == {1: "dismissed", 2: "dismissed", 3: "delivered", 4: "held"}


def test_uplinks_can_be_filtered_by_dismissed(kit, edge_node):
    put(edge_node, CloudEvent, [(1, FAILED, 1), (2, FAILED, 1)])
    kit.json(edge_node, "dismiss", "2")
    assert [u["seq"] for u in kit.json(edge_node, "uplinks", "--status", "dismissed")] == [2]


def test_dismiss_takes_many_seqs(cloud):
    e1 = edge_id(cloud, "e1")
    put(cloud, EdgeEvent, [(seq, FAILED, 1) for seq in range(1, 1201)], e1)
    with cloud.cloud() as c:  # SEQs beyond one statement's worth of parameters
        assert c.dismiss_failed(c.find_edge("e1"), list(range(1, 1300))) == list(range(1, 1201))


@pytest.mark.parametrize(
    "args, exit_code, message",
    [
        (("edge", "dismiss", "nope"), 1, "no edge 'nope'"),
        (("edge", "dismiss", "e1", "two"), 2, "'two' is not a valid integer range"),
        (("edge", "dismiss", "e1", "0"), 2, "is not in the range"),
        (("edge", "dismiss", "e1", "99999999999999999999999"), 2, "is not in the range"),
        (("dismiss", "1"), 1, "winstar dismiss is for an edge node"),
        (("prune", "--older-than", "-1d"), 2, "is negative"),
        (("prune", "--older-than", "7"), 2, "is not a duration"),
        (("prune", "--older-than", "soon"), 2, "is not a duration"),
        (("prune", "--older-than", "1.5h"), 2, "is not a duration"),
        (("run", "--retention", "forever"), 2, "Invalid value for '--retention'"),
        (("run", "--retention", "-7d"), 2, "is negative"),
        # refused before it records the retention or prunes
        (("run", "--retention", "0s", "--listen", "127.0.0.1:99999"), 1, "the port must be 0-65535"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(kit, cloud, args, exit_code, message):
    put(cloud, EdgeEvent, [(1, FAILED, 1), (2, DELIVERED, 1), (3, DISMISSED, 1)], edge_id(cloud, "e1"))
    before = snapshot(cloud)
    json_flag = () if args[0] == "run" else ("--json",)  # `run` prints no JSON
    one_line_refusal(kit.cli(cloud, *args, *json_flag, ok=None), exit_code, message)
    assert snapshot(cloud) == before


def test_prune_on_a_database_that_is_no_node_is_refused(kit, tmp_path):
    result = kit.cli(f"sqlite:///{tmp_path / 'nothing.db'}", "prune", "--json", ok=None)
    one_line_refusal(result, 1, "is not initialized")


# -- several nodes: one prunes at a time ------------------------------------------------------------


@pytest.mark.postgres
def test_a_node_skips_its_round_while_another_prunes(platform, pg_url):
    node = Node(pg_url, platform=platform)
    node.init_cloud()
    try:
        with node.cloud() as c:
            e1, _ = c.create_edge("e1", c.create_tenant("Acme"))
        put(node, EdgeEvent, [(seq, DELIVERED, 1) for seq in range(1, 21)], e1.id)
        with node.db.begin() as other:  # another node, in the middle of its pruning transaction
            assert take_prune_lock(other)
            started = time.monotonic()
            assert prune(node.db, 0, batch=5) == 0  # skipped, without waiting
            assert time.monotonic() - started < 2
            assert len(state(node, EdgeEvent)) == 20
            waited: list[int] = []
            waiter = threading.Thread(target=lambda: waited.append(prune(node.db, 0, batch=5, wait=True)))
            waiter.start()  # `winstar prune` waits for the other node's batch instead
            time.sleep(0.5)
            assert waiter.is_alive() and not waited
        waiter.join(30)
        assert waited == [19] and state(node, EdgeEvent) == {20: DELIVERED}  # the newest stays
        with node.db.begin() as s:  # the lock went with the transactions that held it
            assert take_prune_lock(s)
    finally:
        node.close()


@pytest.mark.postgres
def test_two_nodes_pruning_at_once_delete_each_row_once(platform, pg_url):
    node = Node(pg_url, platform=platform)
    node.init_cloud()
    try:
        with node.cloud() as c:
            e1, _ = c.create_edge("e1", c.create_tenant("Acme"))
        put(node, EdgeEvent, [(seq, DELIVERED, seq) for seq in range(1, 401)], e1.id)
        put(node, EdgeEvent, [(401, PENDING, None), (402, FAILED, 1)], e1.id)
        results: list[int] = []
        gate = threading.Barrier(2)

        def one_node() -> None:
            gate.wait()
            results.append(prune(node.db, 0, batch=7, wait=True))

        threads = [threading.Thread(target=one_node) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(results) == 400 and len(results) == 2
        assert state(node, EdgeEvent) == {401: PENDING, 402: FAILED}
    finally:
        node.close()


# -- the pruning of `winstar run` ----------------------------------------------------------------


def _stored_retention(node: Node) -> str | None:
    with node.db.begin() as s:
        return get_config(s, "retention")


def test_a_running_cloud_prunes_in_the_background_and_stops_cleanly(kit, cloud, tmp_path):
    e1 = edge_id(cloud, "e1")
    now = now_ms()
    put(cloud, EdgeEvent, [(1, DELIVERED, now - DAY), (2, DISMISSED, now - DAY), (3, PENDING, None)], e1)
    put(cloud, EdgeEvent, [(4, FAILED, now - DAY), (5, HELD, None), (6, DELIVERED, now + HOUR)], e1)
    proc = Proc(
        cloud.url,
        tmp_path / "cloud.log",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--retention",
        "1s",
        env={PRUNE_INTERVAL_ENV: "0.5"},
    ).start()
    try:
        # the round at start
        wait_until(lambda: 1 not in state(cloud, EdgeEvent), 30, what="the first pruning round")
        assert state(cloud, EdgeEvent) == {3: PENDING, 4: FAILED, 5: HELD, 6: DELIVERED}
        # a later round: delivered now, gone once older than the retention (1 s)
        put(cloud, EdgeEvent, [(7, DELIVERED, now_ms()), (8, SUPERSEDED, now_ms())], e1)
        wait_until(lambda: 7 not in state(cloud, EdgeEvent), 30, what="a later pruning round")
        # the newest sent event of the stream stays (see test_a_box_restored_...)
        assert state(cloud, EdgeEvent) == {3: PENDING, 4: FAILED, 5: HELD, 6: DELIVERED, 8: SUPERSEDED}
        assert _stored_retention(cloud) == "1s"
        assert proc.alive()
    finally:
        code = proc.stop()
    log = proc.output()
    assert code == 0, log
    assert "pruned 2 delivered, superseded or dismissed event(s) older than 1s" in log, log
    assert "Traceback" not in log, log
    # `winstar prune` without --older-than uses the retention the node ran with
    put(cloud, EdgeEvent, [(9, DELIVERED, now_ms() - 2 * SECOND)], e1)
    assert kit.json(cloud, "prune") == {"deleted": 1}


def test_a_running_edge_prunes_its_uplinks_while_the_cloud_is_away(kit, edge_node, tmp_path):
    now = now_ms()
    put(edge_node, CloudEvent, [(1, DELIVERED, now - 3 * DAY), (2, DELIVERED, now - HOUR), (3, FAILED, 1)])
    proc = Proc(edge_node.url, tmp_path / "edge.log", "--retention", "2d").start()  # cloud: 127.0.0.1:1
    try:
        wait_until(lambda: 1 not in state(edge_node, CloudEvent), 30, what="the edge's pruning round")
        assert state(edge_node, CloudEvent) == {2: DELIVERED, 3: FAILED}
        assert _stored_retention(edge_node) == "2d"
    finally:
        code = proc.stop()
    assert code == 0, proc.output()
    assert "pruned 1 delivered, superseded or dismissed event(s) older than 2d" in proc.output()


def test_run_refuses_a_bad_retention_before_doing_anything(cloud, tmp_path: Path):
    out = winstar(cloud.url, "run", "--retention", "1y", "--listen", "127.0.0.1:0", check=False)
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and "'1y' is not a duration" in err, err
    assert _stored_retention(cloud) is None


def test_a_box_restored_from_an_older_backup_is_still_noticed_after_pruning(
    cloud_node, tmp_path, platform, link_runner
):
    """The cloud notices a box restored from an older backup by comparing its mark with the
    newest sent event of its stream: pruning keeps that one row, however old."""
    import time

    from procs import wait_until
    from test_link import _acme_edge, _box, _copy_sqlite, _drain_once, _edge_names

    from winstar_core.node import Node
    from winstar_core.services.retention import prune

    edge, secret = _acme_edge(cloud_node)
    server = link_runner.start_cloud(cloud_node, 0)
    box = _box(tmp_path, "box.db", platform, server, edge, secret)
    _drain_once(link_runner, box, cloud_node, "a1")
    _copy_sqlite(box, tmp_path / "backup.db")
    with cloud_node.cloud() as c:
        c.assign(c.find_edge("e"), c.create_entity("asset", "a2", c.find_tenant("Acme")))
    _drain_once(link_runner, box, cloud_node, "a2")
    box.close()
    time.sleep(0.01)
    assert prune(cloud_node.db, 0) > 0  # everything delivered is past the retention...
    with cloud_node.db.read() as conn:  # ...but the newest sent event of the stream stays
        assert conn.scalar(sa.select(sa.func.count()).select_from(EdgeEvent)) == 1
    (tmp_path / "box.db").unlink()
    for extra in ("box.db-wal", "box.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    (tmp_path / "backup.db").rename(tmp_path / "box.db")
    restored = Node(f"sqlite:///{tmp_path / 'box.db'}", platform=platform)
    assert "a2" not in _edge_names(restored)
    h = link_runner.start_edge(restored)
    try:
        wait_until(
            lambda: "a2" in _edge_names(restored), timeout=20, what="the restored box gets its state back"
        )
    finally:
        link_runner.stop_edge(h)
        link_runner.stop_cloud(server, 0.2)
        restored.close()
