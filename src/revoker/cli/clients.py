"""``revoker clients``: register the gateways, resource servers and services that call the admin
API with client credentials (:mod:`revoker.clients`).

A secret is printed once, by ``add`` and ``rotate-secret``; only its Argon2 hash is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from revoker.cli._common import (
    EPILOG,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    cli,
    cli_store,
    emit_json,
    fail,
    json_option,
    when,
)
from revoker.clients import SCOPES, ClientExists, ClientNotFound, ClientRegistry

if TYPE_CHECKING:
    from revoker.clients import ClientRecord

__all__ = ["add", "clients", "list_clients", "remove", "rotate_secret"]


def _registry() -> ClientRegistry:
    store = cli_store()
    return ClientRegistry(store.client, store.keys)


def _show_secret(record: ClientRecord, secret: str, as_json: bool) -> None:
    if as_json:
        emit_json({**record.as_dict(), "client_secret": secret})
        return
    click.echo(f"client_id:     {record.client_id}")
    click.echo(f"client_secret: {secret}")
    click.echo(f"name:          {record.name}")
    click.echo(f"scopes:        {' '.join(record.scopes)}")
    click.echo("The secret is shown this once; only its hash is stored.", err=True)


@cli.group("clients", epilog=EPILOG)
def clients() -> None:
    """Registered API clients: client_secret_basic / client_secret_post credentials and scopes.

    Scopes: revoker:introspect (POST /oauth/introspect), revoker:revoke (revoke any token,
    enqueue and read jobs), revoker:admin (everything).
    """


@clients.command("add", epilog=EPILOG)
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="A scope granted (repeatable).",
)
@click.option(
    "--client-id",
    help="Choose the id (e.g. the client_id your tokens carry); default: a random one.",
)
@click.option(
    "--backchannel-logout-uri",
    help="OpenID back-channel logout URI of this relying party (for revoker's events).",
)
@json_option
def add(
    name: str,
    scopes: tuple[str, ...],
    client_id: str | None,
    backchannel_logout_uri: str | None,
    as_json: bool,
) -> None:
    """Register client NAME and print its id and secret (the secret only this once)."""
    try:
        record, secret = _registry().add(
            name, scopes, client_id=client_id, backchannel_logout_uri=backchannel_logout_uri
        )
    except ClientExists as e:
        fail(str(e), EXIT_USAGE)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    _show_secret(record, secret, as_json)


@clients.command("list", epilog=EPILOG)
@json_option
def list_clients(as_json: bool) -> None:
    """Every registered client (never a secret)."""
    records = _registry().list()
    if as_json:
        emit_json([record.as_dict() for record in records])
        return
    if not records:
        click.echo("no clients registered")
        return
    for record in records:
        logout = (
            f"  logout={record.backchannel_logout_uri}" if record.backchannel_logout_uri else ""
        )
        click.echo(
            f"{record.client_id}  {record.name}  scopes={','.join(record.scopes)}  "
            f"created={when(record.created_at)}  secret_rotated={when(record.secret_rotated_at)}"
            f"{logout}"
        )


@clients.command("rotate-secret", epilog=EPILOG)
@click.argument("client_id")
@json_option
def rotate_secret(client_id: str, as_json: bool) -> None:
    """Give CLIENT_ID a new secret (printed once); the old one stops working at once."""
    try:
        record, secret = _registry().rotate_secret(client_id)
    except ClientNotFound as e:
        fail(str(e), EXIT_NOT_FOUND)
    _show_secret(record, secret, as_json)


@clients.command("remove", epilog=EPILOG)
@click.argument("client_id")
def remove(client_id: str) -> None:
    """Unregister CLIENT_ID; its credentials stop working at once."""
    if not _registry().remove(client_id):
        fail(f"no client {client_id!r}", EXIT_NOT_FOUND)
    click.echo(f"removed {client_id}")
