"""The console as processes: `winstar console` serving the API with a token made by the CLI and
stopping on SIGTERM; `winstar demo --console` keeping its cloud and edge running with a one-time
sign-in link and stopping on Ctrl-C; an edge deleted or given a new secret through the API while
its `winstar run` link is up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from procs import cli, free_port, wait_until

from winstar_core.services.cloud import check_secret
from winstar_core.store.models import Edge


def _console(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "winstar_core", "--db", db, "console", "--listen", f"127.0.0.1:{port}"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/openapi.json", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_winstar_console_serves_the_api_with_a_cli_token_and_stops_on_sigterm(tmp_path):
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    cli(db, "init", "cloud")
    cli(db, "tenant", "create", "Acme")
    cli(db, "user", "create", "admin@acme.io", "--authority", "TENANT_ADMIN")
    cli(db, "edge", "create", "Plant 7")
    token = cli(db, "token", "create", "admin@acme.io", "--name", "script", "--json")
    assert set(token) == {"id", "name", "token"} and token["name"] == "script"
    listed = cli(db, "token", "list", "admin@acme.io", "--json")
    assert [(t["id"], t["name"], t["revoked"]) for t in listed] == [(token["id"], "script", False)]
    assert token["token"] not in str(listed)
    port = free_port()
    proc = _console(db, port, tmp_path / "console.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), 30, what="the console to serve")
        auth = {"Authorization": f"Bearer {token['token']}"}
        edges = httpx.get(url + "/api/v1/edges", headers=auth).json()
        assert [e["name"] for e in edges] == ["Plant 7"]
        assert httpx.get(url + "/api/v1/edges").status_code == 401
        # revoked by the CLI while the console runs: refused at once
        assert cli(db, "token", "revoke", token["id"], "--json") == {"id": token["id"], "revoked": True}
        assert httpx.get(url + "/api/v1/edges", headers=auth).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (tmp_path / "console.log").read_text()


def test_winstar_console_on_a_port_in_use_says_so_in_one_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    cli(db, "init", "cloud")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "winstar_core", "--db", db, "console", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"Error: cannot serve the console on 127.0.0.1:{port}: Address already in use"
    ]


def test_winstar_console_refuses_an_edge_database(tmp_path):
    db = f"sqlite:///{tmp_path / 'edge.db'}"
    cli(db, "init", "edge", "--cloud", "127.0.0.1:7070", "--routing-key", "k", "--secret", "s")
    out = cli(db, "console", "--listen", "127.0.0.1:0", check=False)
    assert out.returncode != 0 and "for a cloud node" in out.stderr


def test_user_password_reads_stdin_and_refuses_a_short_one(tmp_path):
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    cli(db, "init", "cloud")
    cli(db, "tenant", "create", "Acme")
    cli(db, "user", "create", "admin@acme.io", "--authority", "TENANT_ADMIN")
    run = [sys.executable, "-m", "winstar_core", "--db", db, "user", "password", "admin@acme.io", "--json"]
    short = subprocess.run(run, input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 1
    assert short.stderr.strip() == "Error: a password needs at least 8 characters"
    ok = subprocess.run(run, input="long enough secret\n", capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"password": "set"' in ok.stdout
    from winstar_core.node import Node
    from winstar_core.services import auth

    node = Node(db)
    try:
        with node.db.begin() as s:
            user = auth.sign_in(s, "admin@acme.io", "long enough secret")
            assert user.password is not None and "long enough secret" not in user.password
    finally:
        node.close()


def test_demo_console_keeps_the_cloud_running_with_a_one_time_link_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "winstar_core", "demo", "--console"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        text = "".join(lines)
        link = re.search(r"sign in:\s+(http://\S+)", text)
        assert link, text
        base = link.group(1).split("/sign-in/")[0]
        with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as browser:
            first = browser.get(link.group(1))
            assert first.status_code in (302, 303, 307), first.text
            edges = browser.get("/api/v1/edges")
            assert edges.status_code == 200
            plant = [e for e in edges.json() if e["name"] == "Plant 7"]
            assert plant, edges.json()
            # the edge of the tour is connected again to the cloud the demo keeps running
            wait_until(lambda: browser.get(f"/api/v1/edges/{plant[0]['id']}").json()["connected"], 30)
        with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as second:
            again = second.get(link.group(1))  # the link is spent
            assert second.get("/api/v1/edges").status_code == 401, again.status_code
        folder = [p for p in tmp_path.iterdir() if p.name.startswith("winstar-demo-")]
        assert len(folder) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + (rest or "")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("winstar-demo-")]


@pytest.mark.slow
def test_a_connected_edge_deleted_through_the_api_loses_its_link_and_the_cloud_goes_on(world):
    from console_world import ConsoleServer

    from winstar_core.services import auth

    with world.cloud.cloud() as c:
        admin = auth.find_user(c.session, "admin@acme.io")
        token = auth.create_token(c.session, admin).token
        other, _ = c.create_edge("Plant 8", c.find_tenant("Acme"))
        other_id = str(other.id)
    world.start_cloud()
    world.start_edge()
    world.wait_connected()
    server = ConsoleServer(world.cloud).start()
    try:
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        # a new secret: the link up now runs on; the old secret opens nothing from now on
        rotated = api.post(f"/api/v1/edges/{world.edge_id}/secret").json()
        with world.cloud.db.begin() as s:
            row = s.get(Edge, world.edge_id)
            assert not check_secret(row, world.secret) and check_secret(row, rotated["secret"])
        gone = api.delete(f"/api/v1/edges/{world.edge_id}")
        assert gone.json() == {"id": str(world.edge_id), "deleted": True}
        assert api.get(f"/api/v1/edges/{world.edge_id}").status_code == 404
        wait_until(lambda: not world.edge_connected(), 60, what="the deleted edge to lose its link")
        assert world.cloud_proc is not None and world.cloud_proc.alive()
        assert [e["id"] for e in api.get("/api/v1/edges").json()] == [other_id]
        api.close()
    finally:
        server.stop()
