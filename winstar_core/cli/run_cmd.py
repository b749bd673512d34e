"""`winstar run`: serve edges (cloud) or keep the link to the cloud (edge)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from winstar_core.cli.api import current_node, db_option
from winstar_core.cli.retention_cmds import DURATION
from winstar_core.errors import WinstarError
from winstar_core.node import CLOUD, Node, check_address
from winstar_core.services.retention import DEFAULT_RETENTION, pruning_beside

if TYPE_CHECKING:
    from winstar_core.metrics import MetricsServer


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise WinstarError(f"cannot read {what} {path}: {exc.strerror}") from None


@click.command("run")
@click.option(
    "--listen",
    "listen_addr",
    default="127.0.0.1:7070",
    show_default=True,
    metavar="HOST:PORT",
    help="cloud: where to serve the edges",
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), help="cloud: PEM certificate chain (enables TLS)"
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="cloud: PEM private key")
@click.option("--ca", type=click.Path(dir_okay=False), help="edge: PEM CA certificate to verify the cloud")
@click.option("--cloud", "cloud_addr", metavar="HOST:PORT", help="edge: override the cloud's address")
@click.option("-v", "--verbose", is_flag=True, help="log every connection event")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    envvar="WINSTAR_BATCH_SIZE",
    help="events per batch",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    envvar="WINSTAR_MAX_IN_FLIGHT",
    help="batches sent before the first is acknowledged",
)
@click.option(
    "--metrics",
    "metrics_addr",
    metavar="HOST:PORT",
    help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics",
)
@click.option(
    "--node-name",
    metavar="NAME",
    help="cloud: this node's name (default: HOST:PORT of --listen)",
)
@click.option(
    "--retention",
    type=DURATION,
    default=DEFAULT_RETENTION,
    show_default=True,
    metavar="DURATION",
    help="how long delivered, superseded and dismissed events are kept (7d, 12h, 30m, 90s)",
)
@db_option
def run(
    listen_addr: str,
    tls_cert: str | None,
    tls_key: str | None,
    ca: str | None,
    cloud_addr: str | None,
    verbose: bool,
    batch_size: int,
    max_in_flight: int,
    metrics_addr: str | None,
    node_name: str | None,
    retention: int,
) -> None:
    """Cloud: serve gRPC. Edge: connect, sync, reconnect forever. Stops cleanly on SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if metrics_addr is not None:
        check_address(metrics_addr, "--metrics", any_port=True)
    node = current_node()
    role = node.role()
    if role is None:
        node.require(CLOUD)
    if role == CLOUD:
        if bool(tls_cert) != bool(tls_key):
            raise WinstarError("--tls-cert and --tls-key go together")
        if node_name is not None and not node_name.strip():
            raise WinstarError("--node-name must not be empty")
        tls = (_read(tls_cert, "certificate"), _read(tls_key, "key"))
        main = _run_cloud(node, listen_addr, tls, batch_size, max_in_flight, metrics_addr, node_name)
        asyncio.run(pruning_beside(main, node.db, retention))
    else:
        if node_name is not None:
            click.echo("warning: --node-name is for a cloud node; ignored on an edge", err=True)
        ca_pem = _read(ca, "CA certificate")
        main = _run_edge(node, cloud_addr, ca_pem, batch_size, max_in_flight, metrics_addr)
        asyncio.run(pruning_beside(main, node.db, retention))


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def _serve_metrics(metrics_addr: str | None) -> MetricsServer | None:
    if metrics_addr is None:
        return None
    from winstar_core import metrics  # prometheus_client: only for `run`

    server = metrics.serve(metrics_addr)
    click.echo(f"metrics on http://{metrics_addr.rsplit(':', 1)[0]}:{server.port}/metrics", err=True)
    return server


async def _run_cloud(
    node: Node,
    listen_addr: str,
    tls: tuple[bytes | None, bytes | None],
    batch_size: int,
    max_in_flight: int,
    metrics_addr: str | None = None,
    node_name: str | None = None,
) -> None:
    from winstar_core import metrics
    from winstar_core.transport.server import CloudServer

    check_address(listen_addr, "--listen", any_port=True)
    metrics_server = _serve_metrics(metrics_addr)
    try:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        server = CloudServer(
            node,
            listen_addr,
            tls_cert=tls[0],
            tls_key=tls[1],
            batch_size=batch_size,
            max_in_flight=max_in_flight,
            node_name=node_name,
        )
        if metrics_server is not None:
            metrics.set_cloud_source(server.metrics_snapshot)
        try:
            port = await server.start()
        except RuntimeError as exc:
            raise WinstarError(f"cannot listen on {listen_addr}: {exc}") from None
        click.echo(f"winstar cloud serving on {listen_addr.rsplit(':', 1)[0]}:{port}", err=True)
        await stop.wait()
        click.echo("stopping: finishing in-flight batches", err=True)
        await server.stop(grace=5.0)
    finally:
        if metrics_server is not None:
            metrics.set_cloud_source(None)
            metrics_server.stop()


async def _run_edge(
    node: Node,
    cloud_addr: str | None,
    ca: bytes | None,
    batch_size: int,
    max_in_flight: int,
    metrics_addr: str | None = None,
) -> None:
    from winstar_core import metrics
    from winstar_core.transport.client import EdgeClient

    metrics_server = _serve_metrics(metrics_addr)
    try:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        client = EdgeClient(node, cloud_addr, ca=ca, batch_size=batch_size, max_in_flight=max_in_flight)
        if metrics_server is not None:
            metrics.set_edge_source(client.pending_uplinks_count)
        click.echo(f"winstar edge connecting to {client.cloud_addr}", err=True)
        await client.run(stop)
        click.echo("stopped", err=True)
    finally:
        if metrics_server is not None:
            metrics.set_edge_source(None)
            metrics_server.stop()
