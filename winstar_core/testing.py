"""A pytest plugin for Winstar and its plugin authors.

Start a test suite with ``pytest_plugins = ["winstar_core.testing"]`` to get:

- ``pg_url``: a fresh PostgreSQL database for this test, cloned from a migrated template
  (``WINSTAR_TEST_PG`` names the server; with ``CI=true`` an unreachable server fails the test
  instead of skipping it);
- ``sqlite_url``: a fresh SQLite file;
- ``db_url``: both, as a parameter (``[sqlite]`` and ``[postgresql]``);
- ``make_platform(*plugins)``: the plugin manager with the installed plugins plus inline ones;
- ``cloud_node`` / ``pe_cloud_node`` / ``edge_node``: initialized nodes;
- ``seed_edge(cloud_node, edge_node, edge_name)``: give an edge database the configuration and
  users that its cloud would send at connect.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from winstar_core.node import Node
from winstar_core.plugin.manager import Platform, make_plugin_manager
from winstar_core.store import migrate
from winstar_core.store.db import make_engine

PG_ENV = "WINSTAR_TEST_PG"
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL maintenance database we may create databases from."""
    url = os.environ.get(PG_ENV, DEFAULT_PG)
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        msg = f"PostgreSQL not reachable at {engine.url!r} ({type(exc).__name__})"
        if _in_ci():
            pytest.fail(f"{msg}: with CI=true the PostgreSQL tests must run", pytrace=False)
        pytest.skip(f"{msg}; start PostgreSQL or set {PG_ENV} to a server URL to run these tests")
    finally:
        engine.dispose()
    yield url


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """A migrated database used as the template of every test database."""
    name = f"winstar_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(make_engine(pg_server).url).set(database=name)
    engine = make_engine(url.render_as_string(hide_password=False))
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server: str, pg_template: str) -> Iterator[str]:
    name = f"winstar_t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    url = (
        sa.engine.make_url(make_engine(pg_server).url)
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / f'winstar-{uuid.uuid4().hex[:8]}.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def platform() -> Platform:
    """The installed plugins, loaded through their entry points."""
    return make_plugin_manager()


@pytest.fixture
def make_platform() -> Callable[..., Platform]:
    """``make_platform(plugin, ...)``: installed plugins plus inline plugin objects (modules or
    classes with ``@hookimpl`` functions), for one test."""

    def factory(*plugins: object, entrypoints: bool = True) -> Platform:
        extra = tuple((getattr(p, "__name__", None) or type(p).__name__, p) for p in plugins)
        return make_plugin_manager(load_entrypoints=entrypoints, extra_plugins=extra)

    return factory


def assert_loaded_through_entry_point(
    platform: Platform, plugin: str, distribution: str, entity_types: list[str]
) -> None:
    """A plugin's first test: it was loaded from its distribution's ``winstar`` entry point and
    registered exactly these entity types."""
    loaded = {p.name: p for p in platform.plugins}
    assert plugin in loaded, f"plugin {plugin!r} was not loaded (loaded: {sorted(loaded)})"
    assert loaded[plugin].distribution == distribution, loaded[plugin]
    assert sorted(platform.types.by_plugin().get(plugin, [])) == sorted(entity_types)


def _cloud(url: str, platform: Platform, edition: str) -> Iterator[Node]:
    node = Node(url, platform=platform)
    node.init_cloud(edition)
    yield node
    node.close()


@pytest.fixture
def cloud_node(db_url: str, platform: Platform) -> Iterator[Node]:
    yield from _cloud(db_url, platform, "ce")


@pytest.fixture
def pe_cloud_node(db_url: str, platform: Platform) -> Iterator[Node]:
    yield from _cloud(db_url, platform, "pe")


@pytest.fixture
def edge_node(tmp_path: Any, platform: Platform) -> Iterator[Node]:
    node = Node(f"sqlite:///{tmp_path / 'edge.db'}", platform=platform)
    node.init_edge("127.0.0.1:1", "unset", "unset")
    yield node
    node.close()


def seed_edge_from_cloud(cloud: Node, edge: Node, edge_name: str) -> None:
    """Copy to ``edge`` the configuration and users the cloud sends at connect (see the Welcome)."""
    from winstar_core.transport.welcome import edge_welcome

    with cloud.cloud() as c:
        welcome = edge_welcome(c, c.find_edge(edge_name))
    with edge.edge() as e:
        e.apply_config(welcome.edge, welcome.users)


@pytest.fixture
def seed_edge() -> Callable[[Node, Node, str], None]:
    return seed_edge_from_cloud


@pytest.fixture
def link_runner() -> Iterator[Any]:
    """A background event loop running in-process cloud servers and edge clients over loopback
    gRPC (see :class:`winstar_core.transport.inprocess.LinkRunner`)."""
    from winstar_core.transport.inprocess import LinkRunner

    runner = LinkRunner()
    yield runner
    runner.close()


@pytest.fixture
def linked(cloud_node: Node, tmp_path: Any, platform: Platform, link_runner: Any) -> Iterator[Any]:
    """A CE cloud (on ``db_url``) with tenant ``Acme``, user ``admin@acme.io`` and edge ``edge``,
    serving in process, and that edge (SQLite) connected to it. Yields an object with ``cloud``,
    ``edge`` (nodes), ``server``, ``client`` and ``runner``."""
    import types

    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        edge, secret = c.create_edge("edge", t)
    server = link_runner.start_cloud(cloud_node, 0)
    edge_node = Node(f"sqlite:///{tmp_path / 'linked-edge.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    link_runner.wait_connected(handle)
    yield types.SimpleNamespace(
        cloud=cloud_node,
        edge=edge_node,
        server=server,
        client=handle.client,
        handle=handle,
        runner=link_runner,
    )
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, grace=0.2)
    edge_node.close()
