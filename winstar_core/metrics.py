"""Prometheus metrics of a node (`winstar run --metrics HOST:PORT`).

One registry for the whole process (:data:`REGISTRY`, not prometheus_client's global default, so
tests and several servers in one process do not clash): every call below counts wherever it is
made. Three groups of families:

* both roles: events delivered / failed / applied / rejected per direction, apply latency, batch
  sizes, database errors;
* the cloud: sessions started and ended (by reason), Sync Edge runs, and, read at scrape time from
  :func:`set_cloud_source`, the connected edges and the pending downlinks per edge;
* an edge: its link state, reconnects, last ack, and (read at scrape time from
  :func:`set_edge_source`) its pending uplinks.

A role's families appear once the process took that role (set its source, or counted one of its
events), so a cloud serves no ``winstar_edge_*`` and an edge no ``winstar_sessions_*``. The
scrape-time sources run in the HTTP server's thread: they must be thread-safe, and one that
raises only drops its own families from that scrape (it is logged once until it works again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from winstar_core.errors import WinstarError

log = logging.getLogger(__name__)

DIRECTIONS = ("downlink", "uplink")
SESSION_END_REASONS = (
    "closed",
    "edge_ended",
    "protocol_error",
    "link_failed",
    "taken_over",
    "node_stopping",
)
#: seconds to apply one batch
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: events in one batch (``--batch-size`` is at most 10,000)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)

# `winstar_x_total` only, without a `winstar_x_created` series next to every counter and histogram
prometheus_client.disable_created_metrics()


@dataclass
class CloudGauges:
    """What a cloud node reports at scrape time."""

    connected_edges: int
    #: pending downlinks per edge name (label ``edge``)
    pending: dict[str, int] = field(default_factory=dict)


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown metrics {what} {value!r}: one of {', '.join(allowed)}")
    return value


class _Source:
    """A function called at scrape time; when it raises, its families are left out (logged once
    per failure streak)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.fn: Callable[[], object] | None = None
        self._failing = False

    def read(self) -> object | None:
        fn = self.fn
        if fn is None:
            return None
        try:
            value = fn()
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "metrics: cannot read %s (%s: %s); left out of the scrape until it works",
                    self.what,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
            else:
                log.debug("metrics: %s still failing: %r", self.what, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("metrics: %s readable again", self.what)
        self._failing = False
        return value


class _State:
    """Every value of the process's metrics; :func:`reset_for_tests` swaps in a fresh one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # -- both roles
        self.common = CollectorRegistry()
        reg = self.common
        self.delivered = Counter(
            "winstar_events_delivered",
            "Events the peer acknowledged as applied, by direction",
            ["direction"],
            registry=reg,
        )
        self.failed = Counter(
            "winstar_events_failed",
            "Events the peer acknowledged as failed, by direction",
            ["direction"],
            registry=reg,
        )
        self.applied = Counter(
            "winstar_events_applied", "Events received and applied, by direction", ["direction"], registry=reg
        )
        self.rejected = Counter(
            "winstar_events_rejected",
            "Events received and refused (answered failed), by direction",
            ["direction"],
            registry=reg,
        )
        self.apply_seconds = Histogram(
            "winstar_apply_seconds",
            "Time to apply one received batch, by direction",
            ["direction"],
            buckets=APPLY_BUCKETS,
            registry=reg,
        )
        self.batch_events = Histogram(
            "winstar_batch_events",
            "Events in one batch put on the wire, by direction",
            ["direction"],
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.db_errors = Counter(
            "winstar_database_errors", "Database failures (infrastructure errors) met", registry=reg
        )
        for d in DIRECTIONS:
            for labelled in (
                self.delivered,
                self.failed,
                self.applied,
                self.rejected,
                self.apply_seconds,
                self.batch_events,
            ):
                labelled.labels(d)
        # -- the cloud
        self.cloud_active = False
        self.cloud = CollectorRegistry()
        self.sessions_started = Counter(
            "winstar_sessions_started", "Edge sessions begun on this node", registry=self.cloud
        )
        self.sessions_ended = Counter(
            "winstar_sessions_ended",
            "Edge sessions ended on this node, by reason",
            ["reason"],
            registry=self.cloud,
        )
        for r in SESSION_END_REASONS:
            self.sessions_ended.labels(r)
        self.sync_runs = Counter("winstar_sync_runs", "Sync Edge runs written", registry=self.cloud)
        self.cloud_source = _Source("the cloud's gauges")
        # -- an edge
        self.edge_active = False
        self.edge_connected = False
        self.edge_reconnects = 0
        self.edge_last_ack: float | None = None
        self.edge_source = _Source("the edge's pending uplinks")

    def collect(self) -> Iterator[Metric]:
        yield from self.common.collect()
        if self.cloud_active:
            yield from self.cloud.collect()
            gauges = self.cloud_source.read()
            if isinstance(gauges, CloudGauges):
                yield GaugeMetricFamily(
                    "winstar_connected_edges", "Edges connected to this node", value=gauges.connected_edges
                )
                pending = GaugeMetricFamily(
                    "winstar_pending_downlinks", "Downlinks not yet acknowledged, by edge", labels=["edge"]
                )
                for name, count in sorted(gauges.pending.items()):
                    pending.add_metric([name], count)
                yield pending
        if self.edge_active:
            with self.lock:
                connected, reconnects, last_ack = (
                    self.edge_connected,
                    self.edge_reconnects,
                    self.edge_last_ack,
                )
            yield GaugeMetricFamily(
                "winstar_edge_connected", "1 while the link to the cloud is up", value=int(connected)
            )
            yield CounterMetricFamily(
                "winstar_edge_reconnects", "Sessions to the cloud begun", value=reconnects
            )
            if last_ack is not None:
                yield GaugeMetricFamily(
                    "winstar_edge_last_ack_timestamp_seconds",
                    "When the cloud last acknowledged uplinks (unix time)",
                    value=last_ack,
                )
            pending_uplinks = self.edge_source.read()
            if isinstance(pending_uplinks, int):
                yield GaugeMetricFamily(
                    "winstar_edge_pending_uplinks", "Uplinks not yet acknowledged", value=pending_uplinks
                )


_state = _State()


class _Current:
    """The one collector of :data:`REGISTRY`: whatever :data:`_state` is now."""

    def collect(self) -> Iterable[Metric]:
        return _state.collect()


REGISTRY = CollectorRegistry()
REGISTRY.register(_Current())


def reset_for_tests() -> None:
    """Every value back to zero, no role, no sources (servers already started keep serving)."""
    global _state
    _state = _State()


def scrape() -> str:
    """The exposition text a scrape would read now."""
    return prometheus_client.generate_latest(REGISTRY).decode()


# -- both roles -------------------------------------------------------------------------------------


def delivered(direction: str, ok: int, failed: int) -> None:
    """A sender got an ack: ``ok`` events applied by the peer, ``failed`` refused."""
    d = _check(direction, DIRECTIONS, "direction")
    s = _state
    if ok:
        s.delivered.labels(d).inc(ok)
    if failed:
        s.failed.labels(d).inc(failed)


def batch_sent(direction: str, events: int) -> None:
    """A sender put a batch of ``events`` on the wire."""
    _state.batch_events.labels(_check(direction, DIRECTIONS, "direction")).observe(events)


def applied(direction: str, events: int, seconds: float) -> None:
    """A receiver applied a batch: ``events`` applied, in ``seconds``."""
    d = _check(direction, DIRECTIONS, "direction")
    s = _state
    if events:
        s.applied.labels(d).inc(events)
    s.apply_seconds.labels(d).observe(seconds)


def rejected(direction: str, events: int) -> None:
    """A receiver refused ``events`` (FAILED verdicts)."""
    d = _check(direction, DIRECTIONS, "direction")
    if events:
        _state.rejected.labels(d).inc(events)


def db_error() -> None:
    """A database failure (an infrastructure error, not a refused event) was met."""
    _state.db_errors.inc()


# -- the cloud --------------------------------------------------------------------------------------


def session_started() -> None:
    s = _state
    s.cloud_active = True
    s.sessions_started.inc()


def session_ended(reason: str) -> None:
    r = _check(reason, SESSION_END_REASONS, "session end reason")
    s = _state
    s.cloud_active = True
    s.sessions_ended.labels(r).inc()


def sync_run() -> None:
    """A Sync Edge was written."""
    s = _state
    s.cloud_active = True
    s.sync_runs.inc()


def set_cloud_source(source: Callable[[], CloudGauges] | None) -> None:
    """What to read at scrape time for the connected edges and pending downlinks (None: nothing).
    It runs in the HTTP server's thread."""
    s = _state
    s.cloud_active = True
    s.cloud_source.fn = source


# -- an edge ----------------------------------------------------------------------------------------


def edge_connected(connected: bool) -> None:
    s = _state
    with s.lock:
        s.edge_active = True
        s.edge_connected = bool(connected)


def edge_reconnect() -> None:
    """A new session to the cloud began."""
    s = _state
    with s.lock:
        s.edge_active = True
        s.edge_reconnects += 1


def edge_ack(timestamp: float | None = None) -> None:
    """An ack of the edge's uplinks arrived at ``timestamp`` (unix seconds; default now)."""
    s = _state
    with s.lock:
        s.edge_active = True
        s.edge_last_ack = time.time() if timestamp is None else float(timestamp)


def set_edge_source(source: Callable[[], int] | None) -> None:
    """What to read at scrape time for the pending uplinks (None: nothing). It runs in the HTTP
    server's thread."""
    s = _state
    with s.lock:
        s.edge_active = True
    s.edge_source.fn = source


# -- the HTTP endpoint ------------------------------------------------------------------------------


class MetricsServer:
    """The HTTP server of :func:`serve`, in a daemon thread."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port = int(httpd.server_port)
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve(address: str) -> MetricsServer:
    """Serve :data:`REGISTRY` over HTTP at ``HOST:PORT`` (``[v6]:PORT`` too; port 0: any free one)
    on every path, ``/metrics`` by convention. A bad address is a :class:`WinstarError`."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise WinstarError(f"cannot serve metrics on {address!r}: it must be HOST:PORT (port 0-65535)")
    try:
        httpd, thread = prometheus_client.start_http_server(int(port), addr=host, registry=REGISTRY)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise WinstarError(f"cannot serve metrics on {address}: {' '.join(reason.split())}") from None
    return MetricsServer(httpd, thread, host)
