"""A node: one database (cloud or edge, decided once by ``init``) plus the loaded plugins."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets as _secrets
import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.errors import WinstarError, WrongRole
from winstar_core.plugin.manager import Platform, make_plugin_manager
from winstar_core.services.cloud import EDITIONS, CloudService
from winstar_core.services.common import get_config, set_config
from winstar_core.services.edge import EdgeService
from winstar_core.store import migrate
from winstar_core.store.db import Database, sqlite_path
from winstar_core.store.models import NodeConfig
from winstar_core.store.outbox import UPLINK_STREAM, ensure_stream

CLOUD = "cloud"
EDGE = "edge"

#: pins the place an edge database records (see :func:`instance_place`)
INSTANCE_PLACE_ENV = "WINSTAR_INSTANCE_PLACE"
MACHINE_ID = Path("/etc/machine-id")
#: set in what :func:`uuid.getnode` returns when it found no MAC and made a random one up
_RANDOM_NODE_BIT = 0x010000000000

log = logging.getLogger(__name__)


class Node:
    def __init__(self, url: str, platform: Platform | None = None) -> None:
        self.db = Database(url)
        self._platform = platform

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            self._platform = make_plugin_manager()
        return self._platform

    @property
    def url(self) -> str:
        return self.db.url

    def close(self) -> None:
        self.db.dispose()

    # -- role --------------------------------------------------------------------------------------

    def role(self) -> str | None:
        path = sqlite_path(self.db.url)
        if path is not None and not path.parent.exists():
            return None  # a new database in a new folder: `init` makes both (SQLite would refuse)
        try:
            with self.db.read() as conn:
                if not sa.inspect(conn).has_table("node_config"):
                    return None
                value = conn.scalar(sa.select(NodeConfig.value).where(NodeConfig.key == "role"))
        except sa.exc.OperationalError as exc:
            raise WinstarError(f"cannot open database {self.db.engine.url!r}: {_first_line(exc)}") from None
        return None if value is None else str(value)

    def require(self, role: str, what: str = "this command") -> None:
        actual = self.role()
        if actual is None:
            raise WrongRole(
                f"database {self.db.engine.url!r} is not initialized: "
                "run `winstar init cloud` or `winstar init edge`"
            )
        if actual != role:
            raise WrongRole(f"{what} is for {_a(role)} node, and this database is {_a(actual)} node")

    def _prepare(self) -> None:
        path = sqlite_path(self.db.url)
        if path is not None and path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(self.db.engine)

    def init_cloud(self, edition: str = "ce") -> bool:
        """Create (or upgrade) a cloud database. Returns False if it already was one."""
        edition = edition.lower()
        if edition not in EDITIONS:
            raise WinstarError(f"edition must be one of {', '.join(EDITIONS)}")
        current = self.role()
        if current == EDGE:
            raise WrongRole("this database is already an edge node; use another database for the cloud")
        self._prepare()
        with self.db.begin() as s:
            if current == CLOUD:
                had = get_config(s, "edition", "ce")
                if had != edition:
                    raise WinstarError(
                        f"this cloud is already initialized as {had.upper()}; the edition cannot change"
                    )
                return False
            set_config(s, "role", CLOUD)
            set_config(s, "edition", edition)
        return True

    def init_edge(
        self,
        cloud: str,
        routing_key: str,
        secret: str,
        secret_file: str | None = None,
        ca_file: str | None = None,
    ) -> bool:
        check_addresses(cloud, "--cloud")
        if not routing_key or not secret:
            raise WinstarError("--routing-key and --secret are both required")
        current = self.role()
        if current == CLOUD:
            raise WrongRole("this database is already a cloud node; use another database for the edge")
        self._prepare()
        path = Path(secret_file) if secret_file else default_secret_file(self.db.url, routing_key)
        write_secret(path, secret)
        with self.db.begin() as s:
            set_config(s, "role", EDGE)
            set_config(s, "cloud", cloud)
            set_config(s, "routing_key", routing_key)
            set_config(s, "secret_file", str(path.resolve()))
            set_config(s, "ca_file", str(Path(ca_file).resolve()) if ca_file else None)
            ensure_stream(s, UPLINK_STREAM)
            self._instance(s)  # kept when the database is initialized again in its place
        return current is None

    # -- instance ----------------------------------------------------------------------------------

    def instance_id(self) -> str:
        """This edge database's instance id, the identity it names in its Hello.

        A copied database (an SD card or VM image cloned to a second box) holds the same id as the
        original, and both would connect with the same credentials; the cloud serves one instance
        per edge, so a copy must notice it is one. The database therefore also records where it
        lives (:func:`instance_place`): at another place it mints a new id, keeps the old one under
        ``instance_copied_from`` and logs a warning. The same place keeps the same id, so a box
        restored from its own backup at the same path is still the edge. A database made before
        instances existed gets its id here. Which copy is the edge is the cloud's decision (the
        first one it serves, until an operator runs `winstar edge reset-instance`), not the box's.
        """
        self.require(EDGE, "an instance id")
        with self.db.begin() as s:
            return self._instance(s)

    def _instance(self, s: Session) -> str:
        # serialize minting between processes (SQLite's BEGIN IMMEDIATE does already)
        s.execute(sa.select(NodeConfig.key).where(NodeConfig.key == "role").with_for_update())
        current = get_config(s, "instance_id")
        place = instance_place(self.db.url)
        recorded = get_config(s, "instance_place")
        if current is not None and recorded == place:
            return str(current)
        new = str(uuid.uuid4())
        set_config(s, "instance_id", new)
        set_config(s, "instance_place", place)
        if current is not None:
            set_config(s, "instance_copied_from", current)
            edge = shlex.quote(str(get_config(s, "edge_name") or "EDGE"))
            log.warning(
                "this edge database was copied or moved (it was instance %s somewhere else); it is "
                "now instance %s. The cloud will refuse this box until an operator runs "
                "`winstar edge reset-instance %s` in the cloud, unless the cloud had not served "
                "instance %s yet",
                current,
                new,
                edge,
                current,
            )
        return new

    # -- services ----------------------------------------------------------------------------------

    @contextmanager
    def cloud(self, what: str = "this command") -> Iterator[CloudService]:
        self.require(CLOUD, what)
        with self.db.begin() as session:
            service = CloudService(session, self.platform)
            yield service
            service.outbox.flush(session)

    @contextmanager
    def edge(self, what: str = "this command") -> Iterator[EdgeService]:
        self.require(EDGE, what)
        with self.db.begin() as session:
            service = EdgeService(session, self.platform)
            yield service
            service.outbox.flush(session)


def check_address(addr: str, option: str, *, any_port: bool = False) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` too) with a port gRPC will really use: 1-65535, or 0 (a free
    port) when ``any_port``; anything else is refused, gRPC would silently wrap it."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WinstarError(f"{option} must be HOST:PORT, not {addr!r}")
    if not (0 if any_port else 1) <= int(port) <= 65535:
        raise WinstarError(f"{option} {addr!r}: the port must be {'0' if any_port else '1'}-65535")
    return addr


def check_addresses(addrs: str, option: str) -> list[str]:
    """``HOST:PORT[,HOST:PORT...]``: the cloud's nodes an edge tries in turn."""
    parts = [a.strip() for a in addrs.split(",")]
    if not addrs.strip() or not all(parts):
        raise WinstarError(f"{option} must be HOST:PORT or HOST:PORT,HOST:PORT..., not {addrs!r}")
    return [check_address(a, option) for a in parts]


def instance_place(url: str) -> str:
    """Where an edge database lives, as a sha256 hex digest: the real path of its SQLite file (a
    PostgreSQL database: its URL without the password), this machine's ``/etc/machine-id`` and its
    MAC address. A copy on another box differs in the MAC (a cloned SD card keeps its machine-id);
    a copy on the same box differs in the path. The MAC counts only when it is real: without one
    :func:`uuid.getnode` makes up a random one, and the place would change at every run.

    ``WINSTAR_INSTANCE_PLACE``, when set, is the whole input instead (for tests, and for operators
    whose MAC or path changes by design, a container for example: pin it to anything stable that
    a copy of the database would not share).
    """
    override = os.environ.get(INSTANCE_PLACE_ENV)
    if override:
        parts = ["pinned", override]
    else:
        path = sqlite_path(url)
        if path is not None:
            where = os.path.realpath(path)
        else:
            where = sa.engine.make_url(url).render_as_string(hide_password=True)  # "***"
        try:
            machine = MACHINE_ID.read_text().strip()
        except OSError:
            machine = ""
        mac = uuid.getnode()
        parts = [where, machine, "" if mac & _RANDOM_NODE_BIT else f"{mac:012x}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def default_secret_file(url: str, routing_key: str) -> Path:
    """Where an edge keeps its secret: beside its SQLite file, or in the user's config folder.
    The secret is never written to a table."""
    path = sqlite_path(url)
    if path is not None:
        return path.with_name(path.name + ".secret")
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "winstar"
    return base / f"edge-{routing_key}.secret"


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{_secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    os.replace(tmp, path)


def read_secret(path: str | Path) -> str:
    override = os.environ.get("WINSTAR_EDGE_SECRET")
    if override:
        return override
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise WinstarError(f"cannot read the edge secret from {path}: {exc.strerror}") from None


def _a(role: str) -> str:
    return f"an {role}" if role == EDGE else f"a {role}"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
