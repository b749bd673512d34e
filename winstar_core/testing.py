"""The test kit: a pytest plugin for Winstar and its plugin authors.

Start a test suite with ``pytest_plugins = ["winstar_core.testing"]``. Everything here returns a
typed object; ``docs/plugins.md`` ("The test kit") is the reference, and a test of the core fails
when something public here is missing from it.

Fixtures:

- ``pg_server``, ``pg_template``, ``pg_url``: a fresh PostgreSQL database per test, cloned from a
  migrated template (``WINSTAR_TEST_PG`` names the server; with ``CI=true`` an unreachable server
  fails the test instead of skipping it);
- ``sqlite_url``: a fresh SQLite file; ``db_url``: both, as a parameter (``[sqlite]``, ``[postgresql]``);
- ``platform``: the installed plugins; ``make_platform(*plugins)``: plus inline ones, for one test;
- ``cloud_node`` / ``pe_cloud_node`` / ``edge_node``: initialized nodes;
- ``seed_edge(cloud_node, edge_node, edge_name)``: the configuration and users a cloud sends at connect;
- ``link_runner`` and ``linked``: a cloud and an edge over real loopback gRPC;
- ``kit``: a :class:`Kit`, which runs ``winstar`` commands in process (:meth:`Kit.cli`), sets up a
  world (tenants, users, edges, entities) through them, builds a peer's events
  (:class:`EventBuilder`) and delivers events between a cloud and an edge through the link's own
  receivers, without a network (:meth:`Kit.deliver_uplinks`, :meth:`Kit.deliver_downlinks`).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from winstar_core.node import Node
from winstar_core.plugin.manager import Platform, make_plugin_manager
from winstar_core.store import migrate
from winstar_core.store.db import make_engine
from winstar_core.transport.client import EdgeClient
from winstar_core.transport.inprocess import EdgeHandle, LinkRunner
from winstar_core.transport.pb import sync_pb2 as pb
from winstar_core.transport.server import CloudServer

__all__ = [
    "DEFAULT_PG",
    "PG_ENV",
    "CliResult",
    "CustomerRecord",
    "Delivery",
    "EdgeRecord",
    "EntityRecord",
    "EntitySummary",
    "EventBuilder",
    "EventRecord",
    "HeldEvent",
    "Kit",
    "Linked",
    "TenantRecord",
    "UserRecord",
    "Verdict",
    "assert_loaded_through_entry_point",
    "cloud_node",
    "db_url",
    "edge_node",
    "kit",
    "link_runner",
    "linked",
    "make_platform",
    "pe_cloud_node",
    "pg_server",
    "pg_template",
    "pg_url",
    "platform",
    "seed_edge",
    "seed_edge_from_cloud",
    "sqlite_url",
]

#: the environment variable naming the PostgreSQL server the tests create their databases on
PG_ENV = "WINSTAR_TEST_PG"
#: the server used when ``WINSTAR_TEST_PG`` is not set
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"

#: where the edge databases a kit makes say their cloud is: never dialled, the kit needs no network
_NO_CLOUD = "127.0.0.1:1"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    """Register the kit's marker, so a plugin's suite needs no configuration for it."""
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server (the kit's pg_url)")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the PostgreSQL runs of ``db_url`` ``postgres`` (``-m "not postgres"`` leaves them out).
    Marked here, not in the fixture's params: a mark named at import time, before
    ``pytest_configure`` registers it, is an unknown mark (an error with ``--strict-markers``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_url") == "postgresql":
            item.add_marker("postgres")


# --------------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------------


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
    """The name of a migrated database, the template of every test database of the session."""
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
    """The URL of a PostgreSQL database of this test's own, dropped after it."""
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
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a new SQLite file in the test's ``tmp_path``."""
    return f"sqlite:///{tmp_path / f'winstar-{uuid.uuid4().hex[:8]}.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """``sqlite_url``, then ``pg_url``: a test using it runs once on each database (the second
    run carries the ``postgres`` marker)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


# --------------------------------------------------------------------------------------------------
# Plugins
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def platform() -> Platform:
    """The installed plugins, loaded through their entry points."""
    return make_plugin_manager()


@pytest.fixture
def make_platform() -> Callable[..., Platform]:
    """``make_platform(plugin, ..., entrypoints=True)``: the installed plugins (none with
    ``entrypoints=False``) plus inline plugin objects (modules, classes or instances with
    ``@hookimpl`` functions), registered under their ``__name__`` (or class name), for one test."""

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


# --------------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------------


def _cloud(url: str, platform: Platform, edition: str) -> Iterator[Node]:
    node = Node(url, platform=platform)
    node.init_cloud(edition)
    yield node
    node.close()


@pytest.fixture
def cloud_node(db_url: str, platform: Platform) -> Iterator[Node]:
    """A CE cloud on ``db_url`` (so: once on SQLite, once on PostgreSQL), with ``platform``."""
    yield from _cloud(db_url, platform, "ce")


@pytest.fixture
def pe_cloud_node(db_url: str, platform: Platform) -> Iterator[Node]:
    """A PE cloud on ``db_url``, with ``platform``."""
    yield from _cloud(db_url, platform, "pe")


@pytest.fixture
def edge_node(tmp_path: Path, platform: Platform) -> Iterator[Node]:
    """An edge on a SQLite file, not configured yet: ``seed_edge`` gives it an edge's identity."""
    node = Node(f"sqlite:///{tmp_path / 'edge.db'}", platform=platform)
    node.init_edge(_NO_CLOUD, "unset", "unset")
    yield node
    node.close()


def seed_edge_from_cloud(cloud: Node, edge: Node, edge_name: str) -> None:
    """Copy to ``edge`` the configuration and users the cloud sends at connect (its Welcome) for
    the edge ``edge_name`` (a name or an id): after this, the edge database is that edge."""
    from winstar_core.transport.welcome import edge_welcome

    with cloud.cloud() as c:
        welcome = edge_welcome(c, c.find_edge(edge_name))
    with edge.edge() as e:
        e.apply_config(welcome.edge, welcome.users)


@pytest.fixture
def seed_edge() -> Callable[[Node, Node, str], None]:
    """:func:`seed_edge_from_cloud`, as a fixture."""
    return seed_edge_from_cloud


# --------------------------------------------------------------------------------------------------
# A real link, in process
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def link_runner() -> Iterator[LinkRunner]:
    """A background event loop running in-process cloud servers and edge clients over loopback
    gRPC (see :class:`winstar_core.transport.inprocess.LinkRunner`)."""
    runner = LinkRunner()
    yield runner
    runner.close()


@dataclass
class Linked:
    """A cloud serving over loopback gRPC and one edge connected to it (the ``linked`` fixture)."""

    #: the CE cloud node (on ``db_url``): tenant ``Acme``, user ``admin@acme.io``, edge ``edge``
    cloud: Node
    #: the edge node (SQLite), connected to the cloud
    edge: Node
    #: the cloud's gRPC server
    server: CloudServer
    #: the edge's client
    client: EdgeClient
    #: the client's task and stop event, for ``runner.stop_edge(handle)``
    handle: EdgeHandle
    #: the loop both run on (the ``link_runner`` fixture)
    runner: LinkRunner


@pytest.fixture
def linked(cloud_node: Node, tmp_path: Path, platform: Platform, link_runner: LinkRunner) -> Iterator[Linked]:
    """A CE cloud (on ``db_url``) with tenant ``Acme``, user ``admin@acme.io`` and edge ``edge``,
    serving in process, and that edge (SQLite) connected to it: a :class:`Linked`."""
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        edge, secret = c.create_edge("edge", t)
    server = link_runner.start_cloud(cloud_node, 0)
    edge_node = Node(f"sqlite:///{tmp_path / 'linked-edge.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    link_runner.wait_connected(handle)
    yield Linked(
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


# --------------------------------------------------------------------------------------------------
# What the kit returns
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    """What one ``winstar`` command run by :meth:`Kit.cli` did."""

    #: the arguments after ``winstar``
    args: tuple[str, ...]
    #: 0: done; 1: a refusal (one line on stderr); 2: a command line that could not be parsed
    exit_code: int
    #: what it printed on stdout
    stdout: str
    #: what it printed on stderr (a refusal's one line, warnings)
    stderr: str
    #: stdout parsed as JSON when ``--json`` was given and the command succeeded, else None
    json: Any = None

    @property
    def ok(self) -> bool:
        """Whether the command succeeded (exit code 0)."""
        return self.exit_code == 0


@dataclass(frozen=True)
class TenantRecord:
    """A tenant, as ``winstar tenant create --json`` prints it."""

    id: uuid.UUID
    name: str


@dataclass(frozen=True)
class CustomerRecord:
    """A customer of a tenant."""

    id: uuid.UUID
    name: str
    tenant_id: uuid.UUID


@dataclass(frozen=True)
class UserRecord:
    """A user, with the roles and permissions it ended up with."""

    id: uuid.UUID
    email: str
    #: ``TENANT_ADMIN`` or ``CUSTOMER_USER``
    authority: str
    tenant_id: uuid.UUID
    customer_id: uuid.UUID | None
    #: role names (PE)
    roles: tuple[str, ...]
    #: ``RESOURCE:OPERATION`` strings its roles grant (PE)
    permissions: tuple[str, ...]


@dataclass(frozen=True)
class EdgeRecord:
    """An edge, with the credentials an edge database connects with (shown once by the CLI)."""

    id: uuid.UUID
    name: str
    tenant_id: uuid.UUID
    routing_key: str
    secret: str


@dataclass(frozen=True)
class EntityRecord:
    """An entity, as ``winstar entity show --json`` prints it (cloud or edge)."""

    id: uuid.UUID
    #: the entity type's wire name
    type: str
    name: str
    tenant_id: uuid.UUID
    customer_id: uuid.UUID | None
    #: 1 when created, +1 at every change
    version: int
    #: the data as stored: validated by the type's schema, defaults filled in
    data: dict[str, Any]


@dataclass(frozen=True)
class EntitySummary:
    """An entity effectively assigned to an edge (``winstar edge entities --json``)."""

    id: uuid.UUID
    type: str
    name: str
    version: int


@dataclass(frozen=True)
class EventRecord:
    """A row of an outbox: a downlink (``winstar edge downlinks``) or an uplink (``winstar uplinks``)."""

    seq: int
    #: the entity type's wire name (names starting with ``_`` are the core's own events)
    type: str
    #: ``ADDED``, ``UPDATED``, ``DELETED``, ``UNASSIGNED``, ``MEMBER_ADDED``, ``MEMBER_REMOVED``
    action: str
    entity_id: uuid.UUID | None
    #: ``pending``, ``delivered``, ``failed``, ``held``, ``superseded`` or ``dismissed``
    status: str
    #: the receiver's reason for a failed event, the sender's for a held one; None otherwise
    error: str | None


@dataclass(frozen=True)
class Verdict:
    """The receiver's answer to one event it was given."""

    seq: int
    type: str
    action: str
    #: the event's entity id, as sent (a peer may send anything: not parsed)
    entity_id: str
    #: applied (or applied before: a duplicate gets its first verdict again)
    ok: bool
    #: why it was refused; ``""`` when ``ok``
    error: str


@dataclass(frozen=True)
class HeldEvent:
    """An event its sender holds: the receiver cannot read it yet (type unknown there, or a newer
    schema version than its plugin knows)."""

    seq: int
    type: str
    action: str
    entity_id: uuid.UUID | None
    #: the sender's reason, as ``winstar uplinks`` / ``winstar edge downlinks`` show it
    reason: str


@dataclass(frozen=True)
class Delivery:
    """What delivering one direction of the link did."""

    #: one verdict per event the receiver was given, in order
    verdicts: list[Verdict] = field(default_factory=list)
    #: the events of the stream held after the delivery, in order
    held: list[HeldEvent] = field(default_factory=list)
    #: how many held events were released at the start, the receiver being able to read them now
    released: int = 0

    @property
    def ok(self) -> bool:
        """Whether every event given to the receiver was applied (held ones do not count)."""
        return all(v.ok for v in self.verdicts)

    @property
    def failed(self) -> list[Verdict]:
        """The refused events' verdicts."""
        return [v for v in self.verdicts if not v.ok]

    @property
    def errors(self) -> list[str]:
        """The refused events' reasons, in order."""
        return [v.error for v in self.verdicts if not v.ok]


# --------------------------------------------------------------------------------------------------
# A peer's events
# --------------------------------------------------------------------------------------------------


class EventBuilder:
    """Builds the events a peer sends (``pb.Event``), numbered from ``first_seq`` in the order
    they are built, for :meth:`Kit.apply_uplinks` and :meth:`Kit.apply_downlinks`.

    An entity's state (``ADDED``, ``UPDATED``) travels as an ``EntityState`` body: its payload is
    the data as compact JSON (what the default ``EntityType.serialize`` writes), or ``payload``
    as given (a type with a wire format of its own, or bytes a hostile peer would send). Its
    ``schema_version`` is ``schema_version`` if given, else the version ``platform`` registers for
    the type, else 0 ("not said": read as the receiver's current version).
    """

    def __init__(
        self,
        tenant_id: uuid.UUID,
        *,
        origin_edge_id: uuid.UUID | None = None,
        platform: Platform | None = None,
        first_seq: int = 1,
    ) -> None:
        #: the tenant the entities are said to belong to
        self.tenant_id = tenant_id
        #: the edge said to have created them (an edge's uplinks), None for the cloud's events
        self.origin_edge_id = origin_edge_id
        #: where default schema versions come from
        self.platform = platform
        #: the seq the next event gets
        self.next_seq = first_seq

    def event(self, type_name: str, action: str, entity_id: str, body: bytes = b"") -> pb.Event:
        """Any event, numbered: the other methods build theirs with it."""
        ev = pb.Event(seq=self.next_seq, type=type_name, action=action, entity_id=entity_id, body=body)
        self.next_seq += 1
        return ev

    def state(
        self,
        action: str,
        type_name: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        entity_id: uuid.UUID | str | None = None,
        schema_version: int | None = None,
        payload: bytes | None = None,
        version: int = 1,
        customer_id: uuid.UUID | None = None,
    ) -> pb.Event:
        """An event with an ``EntityState`` body (``entity_id`` default: a new id)."""
        eid = str(entity_id or uuid.uuid4())
        if schema_version is None:
            types = self.platform.types if self.platform is not None else None
            schema_version = types.get(type_name).schema_version if types and type_name in types else 0
        body = pb.EntityState(
            id=eid,
            type=type_name,
            name=name,
            tenant_id=str(self.tenant_id),
            customer_id=str(customer_id) if customer_id else "",
            version=version,
            schema_version=schema_version,
            payload=payload if payload is not None else _compact_json(dict(data or {})),
            origin_edge_id=str(self.origin_edge_id) if self.origin_edge_id else "",
        ).SerializeToString()
        return self.event(type_name, action, eid, body)

    def added(self, type_name: str, name: str, data: Mapping[str, Any] | None = None, **kw: Any) -> pb.Event:
        """A new entity (keywords as :meth:`state`); its id is ``uuid.UUID(event.entity_id)``."""
        return self.state("ADDED", type_name, name, data, **kw)

    def updated(
        self,
        type_name: str,
        entity_id: uuid.UUID | str,
        name: str,
        data: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> pb.Event:
        """A new state of an entity (its whole data; keywords as :meth:`state`, ``version`` 2 by
        default)."""
        kw.setdefault("version", 2)
        return self.state("UPDATED", type_name, name, data, entity_id=entity_id, **kw)

    def deleted(self, type_name: str, entity_id: uuid.UUID | str) -> pb.Event:
        """An entity deleted (no body)."""
        return self.event(type_name, "DELETED", str(entity_id))

    def unassigned(self, type_name: str, entity_id: uuid.UUID | str) -> pb.Event:
        """Cloud to edge: an entity no longer assigned to the edge (no body)."""
        return self.event(type_name, "UNASSIGNED", str(entity_id))

    def member_added(
        self, container_type: str, container_id: uuid.UUID | str, member_id: uuid.UUID | str
    ) -> pb.Event:
        """Cloud to edge: ``member_id`` joined the container (a ``Membership`` body)."""
        return self._membership("MEMBER_ADDED", container_type, container_id, member_id)

    def member_removed(
        self, container_type: str, container_id: uuid.UUID | str, member_id: uuid.UUID | str
    ) -> pb.Event:
        """Cloud to edge: ``member_id`` left the container."""
        return self._membership("MEMBER_REMOVED", container_type, container_id, member_id)

    def _membership(
        self, action: str, container_type: str, container_id: uuid.UUID | str, member_id: uuid.UUID | str
    ) -> pb.Event:
        body = pb.Membership(container_id=str(container_id), member_id=str(member_id)).SerializeToString()
        return self.event(container_type, action, str(container_id), body)


def _compact_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str).encode()


# --------------------------------------------------------------------------------------------------
# The kit
# --------------------------------------------------------------------------------------------------


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


def _entity(raw: Mapping[str, Any]) -> EntityRecord:
    return EntityRecord(
        id=uuid.UUID(raw["id"]),
        type=raw["type"],
        name=raw["name"],
        tenant_id=uuid.UUID(raw["tenant_id"]),
        customer_id=_uuid(raw.get("customer_id")),
        version=int(raw["version"]),
        data=dict(raw.get("data") or {}),
    )


def _event(raw: Mapping[str, Any]) -> EventRecord:
    return EventRecord(
        seq=int(raw["seq"]),
        type=raw["type"],
        action=raw["action"],
        entity_id=_uuid(raw.get("entity_id")),
        status=raw["status"],
        error=raw.get("error"),
    )


def _ref(value: Any) -> str:
    """What names a tenant, customer, edge or entity on the command line: its id."""
    return str(getattr(value, "id", value))


class Kit:
    """What a plugin's tests need to drive Winstar without reaching into its services (the
    ``kit`` fixture makes one per test). Nodes are :class:`~winstar_core.node.Node` objects (the
    fixtures' nodes, or those :meth:`cloud` and :meth:`edge_node` make); tenants, customers,
    edges and entities may be given as the records the kit returns or as their names or ids.

    The world is set up through the ``winstar`` command line, run in process (:meth:`cli`), so a
    test exercises what an operator would. Events travel between a cloud and an edge through the
    link's own receivers, in the test's thread, without a network (:meth:`deliver_uplinks`,
    :meth:`deliver_downlinks`); ``linked`` is the fixture for a real gRPC link.
    """

    def __init__(self, platform: Platform, tmp_path: Path) -> None:
        #: the platform of a command run on a URL rather than a node, and of new nodes by default
        self.platform = platform
        #: where the kit's SQLite databases go
        self.tmp_path = tmp_path
        self._nodes: list[Node] = []
        self._clis: dict[int, tuple[Platform, click.Group]] = {}
        self._builders: dict[uuid.UUID, EventBuilder] = {}

    def close(self) -> None:
        """Close the nodes this kit made (the fixture does it after the test)."""
        for node in self._nodes:
            node.close()
        self._nodes.clear()

    # -- the command line ---------------------------------------------------------------------

    def cli(
        self, node: Node | str, *args: str, ok: bool | None = True, input: str | None = None
    ) -> CliResult:
        """Run ``winstar ARGS...`` in process on ``node``'s database (a node, or a database URL)
        with the node's platform (a URL: :attr:`platform`), the commands of that platform's
        plugins included. ``ok``: True asserts the command succeeded, False that it failed (exit
        code not 0), None checks nothing. ``input``: what the command reads on stdin (``--data -``).
        An exception that is not a user's mistake propagates with its traceback."""
        url, platform = (node, self.platform) if isinstance(node, str) else (node.url, node.platform)
        result = CliRunner().invoke(
            self._cli_for(platform),
            list(args),
            input=input,
            env={"WINSTAR_DB": url},
            obj=platform,
            catch_exceptions=False,
            prog_name="winstar",
        )
        parsed = None
        if result.exit_code == 0 and "--json" in args:
            parsed = json.loads(result.stdout)
        out = CliResult(tuple(args), result.exit_code, result.stdout, result.stderr, parsed)
        if ok is True:
            assert out.ok, f"winstar {' '.join(args)} exited {out.exit_code}: {out.stderr.strip()}"
        elif ok is False:
            assert not out.ok, f"winstar {' '.join(args)} succeeded, expected a refusal: {out.stdout}"
        return out

    def json(self, node: Node | str, *args: str) -> Any:
        """``cli(node, *args, "--json")``, which must succeed; its parsed output."""
        return self.cli(node, *args, "--json").json

    def _cli_for(self, platform: Platform) -> click.Group:
        """A ``winstar`` root group of its own for ``platform``: the core's commands and those its
        plugins add (``winstar_add_commands``), as ``build_cli`` assembles them, without touching
        the process-wide group (a test's inline plugin must not leave commands behind)."""
        cached = self._clis.get(id(platform))
        if cached is not None and cached[0] is platform:
            return cached[1]
        from winstar_core.cli import WinstarGroup, core_commands
        from winstar_core.cli import cli as root

        group = WinstarGroup(name="winstar", callback=root.callback, params=list(root.params), help=root.help)
        for command in core_commands():
            group.add_command(command)
        for impl in platform.hook.winstar_add_commands.get_hookimpls():
            try:
                impl.function(cli=group)
            except Exception as exc:  # as build_cli: a broken plugin loses its commands
                click.echo(
                    f"warning: plugin {impl.plugin_name!r} failed to add its commands: {exc}", err=True
                )
        self._clis[id(platform)] = (platform, group)
        return group

    # -- nodes ----------------------------------------------------------------------------------

    def cloud(self, edition: str = "ce", *, platform: Platform | None = None, url: str | None = None) -> Node:
        """A cloud node of ``edition`` (``"ce"`` or ``"pe"``) with ``platform`` (default:
        :attr:`platform`), on ``url`` (default: a new SQLite file; pass ``db_url`` to run on both
        databases). A database that already is a cloud of that edition is opened as it is: a
        second node on one URL is the same cloud with other plugins (an upgraded plugin, say)."""
        if url is None:
            url = f"sqlite:///{self.tmp_path / f'kit-cloud-{uuid.uuid4().hex[:8]}.db'}"
        node = Node(url, platform=platform or self.platform)
        self._nodes.append(node)
        node.init_cloud(edition)
        return node

    def edge_node(self, cloud: Node, edge: EdgeRecord | str, *, platform: Platform | None = None) -> Node:
        """A new edge database (SQLite) for ``edge`` of ``cloud``: initialized with the edge's
        routing key and secret when given an :class:`EdgeRecord`, and holding the configuration
        and users the cloud sends at connect (as :func:`seed_edge_from_cloud`), so entities can be
        created on it. ``platform``: its plugins (default: the cloud's)."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", _ref(edge))[:40]
        url = f"sqlite:///{self.tmp_path / f'kit-edge-{slug}-{uuid.uuid4().hex[:8]}.db'}"
        node = Node(url, platform=platform or cloud.platform)
        self._nodes.append(node)
        if isinstance(edge, EdgeRecord):
            node.init_edge(_NO_CLOUD, edge.routing_key, edge.secret)
        else:
            node.init_edge(_NO_CLOUD, "unset", "unset")
        seed_edge_from_cloud(cloud, node, _ref(edge))
        return node

    # -- a world, through the command line ---------------------------------------------------------

    def tenant(self, cloud: Node, name: str = "Acme") -> TenantRecord:
        """``winstar tenant create NAME``."""
        raw = self.json(cloud, "tenant", "create", name)
        return TenantRecord(uuid.UUID(raw["id"]), raw["name"])

    def customer(self, cloud: Node, name: str, tenant: TenantRecord | str | None = None) -> CustomerRecord:
        """``winstar customer create NAME`` (``tenant``: default, the only one)."""
        raw = self.json(cloud, "customer", "create", name, *_tenant_option(tenant))
        return CustomerRecord(uuid.UUID(raw["id"]), raw["name"], uuid.UUID(raw["tenant_id"]))

    def user(
        self,
        cloud: Node,
        email: str,
        tenant: TenantRecord | str | None = None,
        *,
        authority: str = "TENANT_ADMIN",
        customer: CustomerRecord | str | None = None,
        permissions: Sequence[str] = (),
    ) -> UserRecord:
        """``winstar user create EMAIL``. ``permissions`` (PE): ``RESOURCE:OPERATION`` strings,
        granted through a role of the user's own (``winstar role create``)."""
        opts = _tenant_option(tenant)
        role: list[str] = []
        if permissions:
            grants = [a for p in permissions for a in ("--permission", p)]
            made = self.json(cloud, "role", "create", f"role of {email}", *opts, *grants)
            role = ["--role", made["id"]]
        extra = ["--customer", _ref(customer)] if customer is not None else []
        raw = self.json(cloud, "user", "create", email, *opts, "--authority", authority, *extra, *role)
        return UserRecord(
            id=uuid.UUID(raw["id"]),
            email=raw["email"],
            authority=raw["authority"],
            tenant_id=uuid.UUID(raw["tenant_id"]),
            customer_id=_uuid(raw.get("customer_id")),
            roles=tuple(raw.get("roles") or ()),
            permissions=tuple(raw.get("permissions") or ()),
        )

    def edge(self, cloud: Node, name: str, tenant: TenantRecord | str | None = None) -> EdgeRecord:
        """``winstar edge create NAME``: the edge and its credentials."""
        raw = self.json(cloud, "edge", "create", name, *_tenant_option(tenant))
        return EdgeRecord(
            uuid.UUID(raw["id"]), raw["name"], uuid.UUID(raw["tenant_id"]), raw["routing_key"], raw["secret"]
        )

    def create(
        self,
        node: Node,
        type_name: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        user: UserRecord | str | None = None,
        tenant: TenantRecord | str | None = None,
        customer: CustomerRecord | str | None = None,
    ) -> EntityRecord:
        """``winstar entity create TYPE NAME --data JSON``, in the cloud or on an edge (which needs
        ``user``: the email, or the record, of a user the edge knows)."""
        args = ["entity", "create", type_name, name, *_tenant_option(tenant)]
        if data is not None:
            args += ["--data", json.dumps(data)]
        if user is not None:
            args += ["--user", user.email if isinstance(user, UserRecord) else user]
        if customer is not None:
            args += ["--customer", _ref(customer)]
        return _entity(self.json(node, *args))

    def update(
        self,
        node: Node,
        type_name: str,
        entity: EntityRecord | str,
        data: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> EntityRecord:
        """``winstar entity update TYPE REF`` with the keys of ``data`` to change (the type's
        ``merge`` decides) and a new ``name``."""
        args = ["entity", "update", type_name, _ref(entity)]
        if data is not None:
            args += ["--data", json.dumps(data)]
        if name is not None:
            args += ["--name", name]
        return _entity(self.json(node, *args))

    def delete(self, node: Node, type_name: str, entity: EntityRecord | str) -> None:
        """``winstar entity delete TYPE REF``."""
        self.json(node, "entity", "delete", type_name, _ref(entity))

    def show(self, node: Node, type_name: str, entity: EntityRecord | str) -> EntityRecord:
        """``winstar entity show TYPE REF`` (a name or an id)."""
        return _entity(self.json(node, "entity", "show", type_name, _ref(entity)))

    def entities(self, node: Node, type_name: str) -> list[EntityRecord]:
        """``winstar entity list TYPE``: every entity of the type on the node, by name."""
        return [_entity(raw) for raw in self.json(node, "entity", "list", type_name)]

    def assign(self, cloud: Node, edge: EdgeRecord | str, type_name: str, entity: EntityRecord | str) -> None:
        """``winstar edge assign EDGE TYPE REF``."""
        self.json(cloud, "edge", "assign", _ref(edge), type_name, _ref(entity))

    def unassign(
        self, cloud: Node, edge: EdgeRecord | str, type_name: str, entity: EntityRecord | str
    ) -> None:
        """``winstar edge unassign EDGE TYPE REF``."""
        self.json(cloud, "edge", "unassign", _ref(edge), type_name, _ref(entity))

    def edge_entities(self, cloud: Node, edge: EdgeRecord | str) -> list[EntitySummary]:
        """``winstar edge entities EDGE``: what is effectively assigned to the edge (directly or
        through a container)."""
        return [
            EntitySummary(uuid.UUID(r["id"]), r["type"], r["name"], int(r["version"]))
            for r in self.json(cloud, "edge", "entities", _ref(edge))
        ]

    def downlinks(self, cloud: Node, edge: EdgeRecord | str) -> list[EventRecord]:
        """``winstar edge downlinks EDGE``, oldest first."""
        return sorted((_event(r) for r in self.json(cloud, "edge", "downlinks", _ref(edge))), key=_seq)

    def uplinks(self, edge_node: Node) -> list[EventRecord]:
        """``winstar uplinks`` on an edge, oldest first."""
        return sorted((_event(r) for r in self.json(edge_node, "uplinks")), key=_seq)

    # -- events, without a network ----------------------------------------------------------------

    def events(self, edge: EdgeRecord) -> EventBuilder:
        """The :class:`EventBuilder` of ``edge``'s uplinks in this test (one per edge, so its seqs
        go on from one call to the next): entities of the edge's tenant, created by the edge, at
        the schema versions of :attr:`platform`."""
        builder = self._builders.get(edge.id)
        if builder is None:
            builder = self._builders[edge.id] = EventBuilder(
                edge.tenant_id, origin_edge_id=edge.id, platform=self.platform
            )
        return builder

    def apply_uplinks(
        self, cloud: Node, edge: EdgeRecord | uuid.UUID, events: Sequence[pb.Event]
    ) -> Delivery:
        """Have ``cloud`` apply ``events`` as one batch from ``edge``, with the receiver its link
        uses (:func:`winstar_core.transport.server.uplink_receiver`): each event gets the verdict
        a connected edge would get. The stream is the edge's own from before instances, so its
        seqs are independent of :meth:`deliver_uplinks`'; a seq applied before is a duplicate."""
        from winstar_core.transport.server import uplink_receiver

        edge_id = edge.id if isinstance(edge, EdgeRecord) else edge
        return _apply(uplink_receiver(cloud, edge_id), events)

    def apply_downlinks(self, edge_node: Node, events: Sequence[pb.Event]) -> Delivery:
        """Have ``edge_node`` apply ``events`` as one batch from its cloud, with the receiver its
        link uses (:func:`winstar_core.transport.client.downlink_receiver`)."""
        from winstar_core.transport.client import downlink_receiver

        return _apply(downlink_receiver(edge_node), events)

    def deliver_uplinks(self, edge_node: Node, cloud: Node) -> Delivery:
        """Deliver the edge's pending uplinks to ``cloud`` as its link would, in this thread: the
        cloud admits the edge database (as at connect), the edge releases the held events the
        cloud can now read, holds those it cannot (type or schema version unknown to the cloud's
        plugins), and sends the rest in batches; the cloud applies each batch with its link's
        receiver and the edge marks each event from the verdicts (``delivered`` or ``failed``)."""
        from winstar_core.services.instances import admit_instance
        from winstar_core.store.models import CloudEvent, Edge
        from winstar_core.transport.holding import Capabilities, release_held
        from winstar_core.transport.link import OutboxStream
        from winstar_core.transport.server import uplink_receiver

        edge_id = self._edge_id(edge_node)
        instance = edge_node.instance_id()
        with cloud.db.begin() as s:
            row = s.get(Edge, edge_id)
            if row is None:
                raise AssertionError(f"the cloud has no edge {edge_id}")
            admission = admit_instance(s, row, instance, "winstar_core.testing")
        if not admission.ok:
            raise AssertionError(f"the cloud refuses this edge database: {admission.reason}")
        caps = Capabilities(_versions(cloud.platform), _versions(edge_node.platform), "the cloud")
        with edge_node.db.begin() as s:
            released = release_held(s, CloudEvent, caps)
        stream = OutboxStream(edge_node.db)
        return _drain(stream, uplink_receiver(cloud, edge_id, instance), caps, released)

    def deliver_downlinks(self, cloud: Node, edge_node: Node) -> Delivery:
        """Deliver the cloud's pending downlinks for ``edge_node``'s edge to it as the link would:
        the cloud releases the held events the edge can now read, holds those it cannot, and
        sends the rest; the edge applies each batch with its link's receiver, and the cloud marks
        each event from the verdicts. A requested Sync Edge is not started here (the real link's
        housekeeping does that: use ``linked``)."""
        from winstar_core.store.models import EdgeEvent
        from winstar_core.transport.client import downlink_receiver
        from winstar_core.transport.holding import Capabilities, release_held
        from winstar_core.transport.link import OutboxStream

        edge_id = self._edge_id(edge_node)
        caps = Capabilities(_versions(edge_node.platform), _versions(cloud.platform), "the edge")
        with cloud.db.begin() as s:
            released = release_held(s, EdgeEvent, caps, edge_id)
        stream = OutboxStream(cloud.db, edge_id)
        return _drain(stream, downlink_receiver(edge_node), caps, released)

    def _edge_id(self, edge_node: Node) -> uuid.UUID:
        """The edge an edge database is (its configuration, from the cloud's Welcome)."""
        from winstar_core.store.models import NodeConfig

        with edge_node.db.read() as conn:
            raw = conn.scalar(sa.select(NodeConfig.value).where(NodeConfig.key == "edge_id"))
        if not raw:
            raise AssertionError("this edge database is no edge yet: make it with kit.edge_node or seed_edge")
        return uuid.UUID(str(raw))


def _seq(e: EventRecord) -> int:
    return e.seq


def _tenant_option(tenant: TenantRecord | str | None) -> list[str]:
    return [] if tenant is None else ["--tenant", _ref(tenant)]


def _versions(platform: Platform) -> dict[str, int]:
    """The types and schema versions a node announces in its handshake."""
    return {t.name: t.schema_version for t in platform.types}


def _verdicts(events: Sequence[pb.Event], results: Sequence[pb.EventResult]) -> list[Verdict]:
    by_seq = {r.seq: r for r in results}
    out = []
    for e in events:
        r = by_seq[e.seq]
        out.append(Verdict(int(e.seq), e.type, e.action, e.entity_id, bool(r.ok), r.error))
    return out


def _apply(receiver: Any, events: Sequence[pb.Event]) -> Delivery:
    ack, _ = receiver.apply_batch(list(events))
    return Delivery(verdicts=_verdicts(events, ack.results))


def _drain(stream: Any, receiver: Any, caps: Any, released: int) -> Delivery:
    """What the link's Sender and Receiver do with one stream, one batch at a time."""
    from winstar_core.store.models import HELD
    from winstar_core.transport.limits import MAX_BATCH_EVENTS

    stream.load_held(caps)
    verdicts: list[Verdict] = []
    cursor = 0
    while True:
        events, last_seq = stream.fetch(cursor, MAX_BATCH_EVENTS)
        if not events:
            break
        cursor = events[-1].seq
        held = [
            (e.seq, why)
            for e in events
            if (why := caps.why_held(e.seq, e.type, e.action, e.entity_id, e.body)) is not None
        ]
        if held:
            stream.hold(held)
            seqs = {seq for seq, _ in held}
            events = [e for e in events if e.seq not in seqs]
        if not events:
            continue
        ack, _ = receiver.apply_batch(events, last_seq)
        stream.acknowledge(list(ack.results))
        verdicts += _verdicts(events, ack.results)
    m = stream.model
    where = [m.status == HELD] + ([m.edge_id == stream.edge_id] if stream.edge_id is not None else [])
    with stream.db.read() as conn:
        rows = conn.execute(
            sa.select(m.seq, m.type, m.action, m.entity_id, m.error).where(*where).order_by(m.seq)
        )
        still = [HeldEvent(int(seq), t, a, _uuid(eid), err or "") for seq, t, a, eid, err in rows]
    return Delivery(verdicts=verdicts, held=still, released=released)


@pytest.fixture
def kit(platform: Platform, tmp_path: Path) -> Iterator[Kit]:
    """A :class:`Kit` for this test (with ``platform``; its nodes closed after the test)."""
    k = Kit(platform, tmp_path)
    yield k
    k.close()
