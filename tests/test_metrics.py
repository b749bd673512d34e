"""Prometheus metrics (`winstar run --metrics HOST:PORT`): what each call counts, what a scrape over
HTTP shows, and both real processes scraped end to end."""

from __future__ import annotations

import logging
import re
import socket
import urllib.request
import uuid

import pytest
from e2e_world import _tenant
from procs import cli, free_port, wait_until, winstar

from winstar_core import metrics
from winstar_core.errors import WinstarError

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[str, float]:
    """Exposition text -> {'name{labels}': value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[m[1] + (m[2] or "")] = float(m[3])
    return out


def families(text: str) -> dict[str, str]:
    """Exposition text -> {family name: type}."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


@pytest.fixture
def fresh():
    metrics.reset_for_tests()
    yield
    metrics.reset_for_tests()


@pytest.fixture
def server(fresh):
    s = metrics.serve("127.0.0.1:0")
    yield s
    s.stop()


# -- unit -------------------------------------------------------------------------------------------


def test_both_roles_count_per_direction(fresh):
    metrics.delivered("downlink", 5, 2)
    metrics.delivered("downlink", 1, 0)
    metrics.delivered("uplink", 0, 3)
    metrics.batch_sent("downlink", 7)
    metrics.batch_sent("downlink", 700)
    metrics.applied("uplink", 4, 0.02)
    metrics.applied("uplink", 0, 3.0)
    metrics.rejected("uplink", 2)
    metrics.db_error()
    metrics.db_error()
    v = parse(metrics.scrape())
    assert v['winstar_events_delivered_total{direction="downlink"}'] == 6
    assert v['winstar_events_failed_total{direction="downlink"}'] == 2
    assert v['winstar_events_delivered_total{direction="uplink"}'] == 0
    assert v['winstar_events_failed_total{direction="uplink"}'] == 3
    assert v['winstar_batch_events_count{direction="downlink"}'] == 2
    assert v['winstar_batch_events_sum{direction="downlink"}'] == 707
    assert v['winstar_batch_events_bucket{direction="downlink",le="10.0"}'] == 1
    assert v['winstar_batch_events_bucket{direction="downlink",le="10000.0"}'] == 2
    assert v['winstar_batch_events_count{direction="uplink"}'] == 0
    assert v['winstar_events_applied_total{direction="uplink"}'] == 4
    assert v['winstar_events_applied_total{direction="downlink"}'] == 0
    assert v['winstar_apply_seconds_count{direction="uplink"}'] == 2
    assert v['winstar_apply_seconds_sum{direction="uplink"}'] == pytest.approx(3.02)
    assert v['winstar_apply_seconds_bucket{direction="uplink",le="0.025"}'] == 1
    assert v['winstar_events_rejected_total{direction="uplink"}'] == 2
    assert v["winstar_database_errors_total"] == 2
    # a role's families appear only once the process took that role
    assert not any(k.startswith(("winstar_sessions", "winstar_edge_", "winstar_sync")) for k in v)


def test_unknown_direction_or_reason_is_a_programming_error(fresh):
    with pytest.raises(ValueError, match="direction 'downlinks'"):
        metrics.delivered("downlinks", 1, 0)
    with pytest.raises(ValueError, match="reason 'bored'"):
        metrics.session_ended("bored")


def test_cloud_counts_and_reads_its_source_at_scrape_time(fresh):
    metrics.session_started()
    metrics.session_started()
    metrics.session_ended("link_failed")
    metrics.session_ended("taken_over")
    metrics.session_ended("taken_over")
    metrics.sync_run()
    calls = []

    def source() -> metrics.CloudGauges:
        calls.append(1)
        return metrics.CloudGauges(connected_edges=len(calls), pending={"Plant 7": 3, 'odd "name"': 0})

    metrics.set_cloud_source(source)
    text = metrics.scrape()
    v = parse(text)
    assert v["winstar_sessions_started_total"] == 2
    assert v['winstar_sessions_ended_total{reason="link_failed"}'] == 1
    assert v['winstar_sessions_ended_total{reason="taken_over"}'] == 2
    for reason in metrics.SESSION_END_REASONS:
        assert f'winstar_sessions_ended_total{{reason="{reason}"}}' in v
    assert v["winstar_sync_runs_total"] == 1
    assert v["winstar_connected_edges"] == 1
    assert v['winstar_pending_downlinks{edge="Plant 7"}'] == 3
    assert v['winstar_pending_downlinks{edge="odd \\"name\\""}'] == 0
    assert parse(metrics.scrape())["winstar_connected_edges"] == 2, "read fresh at every scrape"
    types = families(text)
    assert types["winstar_connected_edges"] == "gauge"
    assert types["winstar_pending_downlinks"] == "gauge"
    assert types["winstar_sessions_started_total"] == "counter"
    assert not any(k.startswith("winstar_edge_") for k in v)


def test_edge_counts_and_reads_its_source_at_scrape_time(fresh):
    pending = [4]
    metrics.set_edge_source(lambda: pending[0])
    v = parse(metrics.scrape())
    assert v["winstar_edge_connected"] == 0
    assert v["winstar_edge_reconnects_total"] == 0
    assert v["winstar_edge_pending_uplinks"] == 4
    assert "winstar_edge_last_ack_timestamp_seconds" not in v, "no ack yet: no timestamp"
    metrics.edge_reconnect()
    metrics.edge_connected(True)
    metrics.edge_ack(1_700_000_000.5)
    metrics.edge_reconnect()
    pending[0] = 0
    text = metrics.scrape()
    v = parse(text)
    assert v["winstar_edge_connected"] == 1
    assert v["winstar_edge_reconnects_total"] == 2
    assert v["winstar_edge_pending_uplinks"] == 0
    assert v["winstar_edge_last_ack_timestamp_seconds"] == 1_700_000_000.5
    assert families(text)["winstar_edge_reconnects_total"] == "counter"
    metrics.edge_connected(False)
    assert parse(metrics.scrape())["winstar_edge_connected"] == 0
    assert not any(k.startswith(("winstar_sessions", "winstar_connected_edges")) for k in v)


def test_names_follow_prometheus_conventions(fresh):
    metrics.set_cloud_source(lambda: metrics.CloudGauges(0, {"e": 1}))
    metrics.set_edge_source(lambda: 0)
    metrics.edge_ack(1.0)
    types = families(metrics.scrape())
    assert set(types) == {
        "winstar_events_delivered_total",
        "winstar_events_failed_total",
        "winstar_events_applied_total",
        "winstar_events_rejected_total",
        "winstar_apply_seconds",
        "winstar_batch_events",
        "winstar_database_errors_total",
        "winstar_sessions_started_total",
        "winstar_sessions_ended_total",
        "winstar_sync_runs_total",
        "winstar_connected_edges",
        "winstar_pending_downlinks",
        "winstar_edge_connected",
        "winstar_edge_reconnects_total",
        "winstar_edge_last_ack_timestamp_seconds",
        "winstar_edge_pending_uplinks",
    }
    for name, kind in types.items():
        assert re.fullmatch(r"winstar_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
    assert types["winstar_apply_seconds"] == types["winstar_batch_events"] == "histogram"


def test_a_scrape_over_http(server):
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    metrics.delivered("uplink", 3, 1)
    metrics.set_cloud_source(lambda: metrics.CloudGauges(1, {"Plant 7": 2}))
    v = parse(fetch(server.port))
    assert v['winstar_events_delivered_total{direction="uplink"}'] == 3
    assert v['winstar_events_failed_total{direction="uplink"}'] == 1
    assert v["winstar_connected_edges"] == 1
    assert v['winstar_pending_downlinks{edge="Plant 7"}'] == 2
    metrics.delivered("uplink", 2, 0)  # counted anywhere in the process, served by every server
    other = metrics.serve("127.0.0.1:0")
    try:
        assert parse(fetch(other.port))['winstar_events_delivered_total{direction="uplink"}'] == 5
    finally:
        other.stop()
    assert parse(fetch(server.port))['winstar_events_delivered_total{direction="uplink"}'] == 5


def test_a_raising_source_does_not_break_the_scrape(server, caplog):
    def broken() -> metrics.CloudGauges:
        raise RuntimeError("database is gone\nsecond line")

    metrics.set_cloud_source(broken)
    metrics.set_edge_source(lambda: 1 // 0)
    metrics.session_started()
    with caplog.at_level(logging.WARNING, logger="winstar_core.metrics"):
        for _ in range(3):
            v = parse(fetch(server.port))
            assert v["winstar_sessions_started_total"] == 1
            assert v["winstar_edge_connected"] == 0
            assert "winstar_connected_edges" not in v and "winstar_edge_pending_uplinks" not in v
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # once per source, not per scrape
    assert any("RuntimeError: database is gone" in w and "second line" not in w for w in warnings)
    assert any("ZeroDivisionError" in w for w in warnings)
    metrics.set_cloud_source(lambda: metrics.CloudGauges(3, {}))
    assert parse(fetch(server.port))["winstar_connected_edges"] == 3


def test_stop_frees_the_port(fresh):
    s = metrics.serve("127.0.0.1:0")
    port = s.port
    fetch(port)
    s.stop()
    s.stop()  # twice is harmless
    again = metrics.serve(f"127.0.0.1:{port}")
    try:
        assert again.port == port
        fetch(port)
    finally:
        again.stop()


def _one_line_error(address: str) -> str:
    with pytest.raises(WinstarError) as info:
        metrics.serve(address)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_a_bad_address_is_one_line(fresh):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = _one_line_error(f"127.0.0.1:{port}")
        assert message == f"cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    assert "cannot serve metrics on no.such.host.invalid:0" in _one_line_error("no.such.host.invalid:0")
    assert "must be HOST:PORT" in _one_line_error("9464")
    assert "must be HOST:PORT" in _one_line_error("127.0.0.1:70000")
    assert "must be HOST:PORT" in _one_line_error(":9464")


@pytest.mark.parametrize(
    "metrics_arg, message",
    [
        ("9464", "--metrics must be HOST:PORT, not '9464'"),
        ("127.0.0.1:99999", "--metrics '127.0.0.1:99999': the port must be 0-65535"),
    ],
)
def test_run_refuses_a_bad_metrics_address_in_one_line(sqlite_url, metrics_arg, message):
    cli(sqlite_url, "init", "cloud")
    out = winstar(sqlite_url, "run", "--listen", "127.0.0.1:0", "--metrics", metrics_arg, check=False)
    err = out.stderr.strip()
    assert out.returncode == 1 and len(err.splitlines()) == 1 and message in err, err


def test_run_refuses_a_taken_metrics_port_in_one_line(sqlite_url):
    cli(sqlite_url, "init", "cloud")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = winstar(
            sqlite_url, "run", "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}", check=False
        )
    err = out.stderr.strip()
    assert out.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in err, err


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cloud_and_edge_processes_serve_their_metrics(world):
    w = world
    cloud_port, edge_port = free_port(), free_port()
    w.start_cloud("--metrics", f"127.0.0.1:{cloud_port}", "--node-name", "cloud-a")
    w.start_edge("--metrics", f"127.0.0.1:{edge_port}", "--node-name", "not-for-an-edge")
    w.wait_connected()
    assert f"metrics on http://127.0.0.1:{cloud_port}/metrics" in w.cloud_proc.output()
    assert f"metrics on http://127.0.0.1:{edge_port}/metrics" in w.edge_proc.output()
    assert "--node-name is for a cloud node; ignored on an edge" in w.edge_proc.output()

    made = cli(w.edge.url, "entity", "create", "device", "Thermo", "--user", "admin@acme.io", "--json")
    dev_id = uuid.UUID(made["id"])
    dash = w.cloud_do(lambda c: c.create_entity("dashboard", "Overview", _tenant(c), {"title": "v1"}))
    w.cloud_do(lambda c: c.assign(c.find_edge("Plant 7"), c.entities.find_entity("dashboard", "Overview")))
    wait_until(lambda: dash.id in w.edge_entities(), what="the dashboard on the edge")

    def in_cloud() -> bool:
        with w.cloud.cloud() as c:
            return dev_id in {e.id for e in c.effective_entities(c.find_edge("Plant 7"))}

    wait_until(in_cloud, what="the edge's device in the cloud")
    wait_until(lambda: w.edge_pending() == 0 and w.cloud_pending() == 0, what="everything acknowledged")

    last: dict[int, dict[str, float]] = {}

    def scraped(port: int) -> dict[str, float]:
        last[port] = parse(fetch(port))
        return last[port]

    def cloud_ready() -> dict[str, float] | None:
        v = scraped(cloud_port)
        ok = (
            v.get("winstar_connected_edges") == 1
            and v.get('winstar_events_applied_total{direction="uplink"}', 0) >= 1
            and v.get("winstar_sessions_started_total", 0) >= 1
            and v.get('winstar_events_delivered_total{direction="downlink"}', 0) >= 1
            and v.get('winstar_pending_downlinks{edge="Plant 7"}', 0) == 0
        )
        return v if ok else None

    def edge_ready() -> dict[str, float] | None:
        v = scraped(edge_port)
        ok = (
            v.get("winstar_edge_connected") == 1
            and v.get("winstar_edge_pending_uplinks") == 0
            and v.get("winstar_edge_reconnects_total", 0) >= 1
            and v.get('winstar_events_delivered_total{direction="uplink"}', 0) >= 1
            and v.get('winstar_events_applied_total{direction="downlink"}', 0) >= 1
            and v.get("winstar_edge_last_ack_timestamp_seconds", 0) > 0
        )
        return v if ok else None

    try:
        cloud = wait_until(cloud_ready, 30, what="the cloud's metrics")
        edge = wait_until(edge_ready, 30, what="the edge's metrics")
    except TimeoutError as exc:
        shown = {port: {k: x for k, x in v.items() if "_bucket" not in k} for port, v in last.items()}
        raise AssertionError(f"{exc}; last scrapes (cloud {cloud_port}, edge {edge_port}): {shown}") from None
    assert cloud['winstar_batch_events_count{direction="downlink"}'] >= 1
    assert not any(k.startswith("winstar_edge_") for k in cloud), "the cloud serves no edge metrics"
    assert not any(k.startswith(("winstar_sessions_", "winstar_connected_edges")) for k in edge)

    assert w.cloud_proc.stop() == 0 and w.edge_proc.stop() == 0
    for port in (cloud_port, edge_port):
        with pytest.raises(OSError):
            fetch(port)
