"""Real `winstar` processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from winstar_core.transport.inprocess import wait_for


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

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")
