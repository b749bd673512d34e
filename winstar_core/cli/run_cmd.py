"""`winstar run`: serve edges (cloud) or keep the link to the cloud (edge)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from winstar_core.cli.api import current_node, db_option
from winstar_core.errors import WinstarError
from winstar_core.node import CLOUD, Node, check_address


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
) -> None:
    """Cloud: serve gRPC. Edge: connect, sync, reconnect forever. Stops cleanly on SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    node = current_node()
    role = node.role()
    if role is None:
        node.require(CLOUD)
    if role == CLOUD:
        if bool(tls_cert) != bool(tls_key):
            raise WinstarError("--tls-cert and --tls-key go together")
        tls = (_read(tls_cert, "certificate"), _read(tls_key, "key"))
        asyncio.run(_run_cloud(node, listen_addr, tls, batch_size, max_in_flight))
    else:
        asyncio.run(_run_edge(node, cloud_addr, _read(ca, "CA certificate"), batch_size, max_in_flight))


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run_cloud(
    node: Node, listen_addr: str, tls: tuple[bytes | None, bytes | None], batch_size: int, max_in_flight: int
) -> None:
    from winstar_core.transport.server import CloudServer

    stop = asyncio.Event()
    _stop_on_signals(stop)
    check_address(listen_addr, "--listen", any_port=True)
    server = CloudServer(
        node, listen_addr, tls_cert=tls[0], tls_key=tls[1], batch_size=batch_size, max_in_flight=max_in_flight
    )
    try:
        port = await server.start()
    except RuntimeError as exc:
        raise WinstarError(f"cannot listen on {listen_addr}: {exc}") from None
    click.echo(f"winstar cloud serving on {listen_addr.rsplit(':', 1)[0]}:{port}", err=True)
    await stop.wait()
    click.echo("stopping: finishing in-flight batches", err=True)
    await server.stop(grace=5.0)


async def _run_edge(
    node: Node, cloud_addr: str | None, ca: bytes | None, batch_size: int, max_in_flight: int
) -> None:
    from winstar_core.transport.client import EdgeClient

    stop = asyncio.Event()
    _stop_on_signals(stop)
    client = EdgeClient(node, cloud_addr, ca=ca, batch_size=batch_size, max_in_flight=max_in_flight)
    click.echo(f"winstar edge connecting to {client.cloud_addr}", err=True)
    await client.run(stop)
    click.echo("stopped", err=True)
