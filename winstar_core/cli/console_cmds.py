"""The console's commands (cloud): `winstar console`, users' passwords and API tokens."""

from __future__ import annotations

import sys

import click

from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.cli.cloud_cmds import user_group
from winstar_core.node import CLOUD, check_address
from winstar_core.services import auth
from winstar_core.services.shapes import token_json

DEFAULT_LISTEN = "127.0.0.1:8080"


@click.command("console")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="where to serve the web console and the REST API",
)
@click.option(
    "--secure-cookies",
    is_flag=True,
    help="mark the session cookie Secure (set it when a TLS proxy serves the console)",
)
@node_options
def console(listen: str, secure_cookies: bool, as_json: bool) -> None:
    """Serve the web console and the REST API (/api/v1) on this cloud database until Ctrl-C.

    Any number of console processes may serve one cloud, beside or apart from its `winstar run`
    nodes. Users sign in with the password `winstar user password` sets; scripts send
    `Authorization: Bearer TOKEN` (`winstar token create`)."""
    from winstar_core.console.app import serve

    node = current_node()
    node.require(CLOUD, "winstar console")
    host, _, port = check_address(listen, "--listen", any_port=True).rpartition(":")
    serve(
        node,
        host.strip("[]"),
        int(port),
        secure_cookies=secure_cookies,
        ready=lambda url: click.echo(f"winstar console on {url} (Ctrl-C stops it)", err=True),
    )


@user_group.command("password")
@click.argument("email")
@node_options
def user_password(email: str, as_json: bool) -> None:
    """Set a user's console password, read from a prompt (twice), or from stdin when it is not a
    terminal (its first line)."""
    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    with current_node().cloud("winstar user password") as cloud:
        user = auth.find_user(cloud.session, email)
        auth.set_password(cloud.session, user, password)
        value = {"id": str(user.id), "email": user.email, "password": "set"}
    emit(value, as_json)


@click.group("token")
def token_group() -> None:
    """API tokens for the REST API (cloud)."""


@token_group.command("create")
@click.argument("email")
@click.option("--name", help="what the token is for (default: a name with the time)")
@node_options
def token_create(email: str, name: str | None, as_json: bool) -> None:
    """A new API token for the user EMAIL, shown this once (the cloud keeps only its hash)."""
    with current_node().cloud("winstar token create") as cloud:
        user = auth.find_user(cloud.session, email)
        issued = auth.create_token(cloud.session, user, name)
        value = {"id": str(issued.id), "name": issued.name, "token": issued.token}
    emit(value, as_json)


@token_group.command("list")
@click.argument("email")
@node_options
def token_list(email: str, as_json: bool) -> None:
    """The user's tokens (never the tokens themselves)."""
    with current_node().cloud("winstar token list") as cloud:
        user = auth.find_user(cloud.session, email)
        value = [token_json(t) for t in auth.user_tokens(cloud.session, user)]
    emit(value, as_json, ["id", "name", "created_time", "last_used", "revoked"])


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@node_options
def token_revoke(token_id: str, as_json: bool) -> None:
    """Revoke a token: it opens nothing from now on."""
    with current_node().cloud("winstar token revoke") as cloud:
        row = auth.revoke_token(cloud.session, token_id)
        value = {"id": str(row.id), "revoked": True}
    emit(value, as_json)


COMMANDS = [console, token_group]
