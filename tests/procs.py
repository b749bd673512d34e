"""Real `winstar` processes for end-to-end tests."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winstar_core.transport.inprocess import wait_for

if TYPE_CHECKING:
    from winstar_core.testing import Kit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = ""
) -> Any:
    return wait_for(predicate, timeout, interval, what)


def winstar(db: str, *args: str, check: bool = True, env: dict[str, str] | None = None) -> Any:
    """Run one CLI command in its own process; returns the parsed JSON when --json is given."""
    out = subprocess.run(
        [sys.executable, "-m", "winstar_core", "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and out.returncode != 0:
        raise AssertionError(f"winstar {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    if "--json" in args and out.returncode == 0:
        return json.loads(out.stdout)
    return out


@functools.cache
def _kit() -> Kit:
    # imported here: conftest imports this module before pytest loads the kit as a plugin
    from winstar_core.plugin.manager import make_plugin_manager
    from winstar_core.testing import Kit

    # the installed plugins, loaded through their entry points, as `python -m winstar_core` loads them
    return Kit(make_plugin_manager(), Path(tempfile.gettempdir()))


def cli(db: str, *args: str, check: bool = True) -> Any:
    """One CLI command run in this process: the same click commands, plugins and database as
    :func:`winstar`, in tens of milliseconds instead of a second or more (a new interpreter
    importing grpc, SQLAlchemy and every plugin). For the probes and the set-up of tests about
    `winstar run` processes (they poll, and a slow probe slows the test, or backs off the edge
    while it waits); a test about the command line's own process uses :func:`winstar`. Returns
    the parsed JSON when --json is given, else an object with ``returncode``, ``stdout``, ``stderr``."""
    out = _kit().cli(db, *args, ok=None)
    if check and not out.ok:
        raise AssertionError(f"winstar {' '.join(args)} failed ({out.exit_code}): {out.stderr}")
    if "--json" in args and out.ok:
        return out.json
    return subprocess.CompletedProcess(["winstar", *args], out.exit_code, out.stdout, out.stderr)


class Proc:
    """`winstar run` in a child process, with its output in a log file."""

    def __init__(self, db: str, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.db, self.log, self.args, self.env = db, log, args, env
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as fh:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "winstar_core", "--db", self.db, "run", *self.args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.p is not None
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return self.p.wait(timeout)

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` without waiting (see :func:`stop_all`)."""
        assert self.p is not None
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def stop_all(procs: list[Proc], timeout: float = 20) -> None:
    """Stop the processes still running, all at once (each takes a moment to finish cleanly)."""
    running = [p for p in procs if p.alive()]
    for p in running:
        p.send()
    for p in running:
        assert p.p is not None
        p.p.wait(timeout)
