"""``revoker init`` and ``recover``: the data's identity, and the end of a recorded loss."""

from __future__ import annotations

import click

from revoker.cli._common import EPILOG, actor_option, cli, cli_store, emit_json, json_option

__all__ = [
    "init",
    "recover",
]


@cli.command("init", epilog=EPILOG)
@json_option
def init(as_json: bool) -> None:
    """Give the revocation data its identity (an epoch) before the first revocation.

    Run once per deployment, then set REVOKER_REQUIRE_INIT=true: a missing epoch is then always
    a loss, even to a process that has just started. Running it again changes nothing.
    """
    created, epoch = cli_store().init()
    if as_json:
        emit_json({"epoch": epoch, "created": created})
        return
    click.echo(f"epoch {epoch}" + (" created" if created else " (already initialized)"))


@cli.command("recover", epilog=EPILOG)
@click.option(
    "--accept",
    "mode",
    flag_value="accept",
    help="Adopt the data as it is now (after restoring what could be) as the new epoch.",
)
@click.option(
    "--cutoff",
    "mode",
    flag_value="cutoff",
    help="Write a global cut-off now (every token issued until now is revoked), then adopt.",
)
@actor_option
@json_option
def recover(mode: str | None, actor: str, as_json: bool) -> None:
    """End a recorded loss of the revocation data: checks stop failing closed, health is ok.

    After a loss (REVOKER_ON_DATA_LOSS), restore what you can (revocations from the audit of
    another system, a backup), then run `revoker recover --accept`; or `--cutoff` to revoke every
    token issued until now instead. Either gives the data a new epoch.
    """
    if mode is None:
        raise click.UsageError("choose --accept or --cutoff")
    observed = cli_store().recover(cutoff=mode == "cutoff", actor=actor)
    if as_json:
        emit_json({"epoch": observed.epoch, "seq": observed.seq, "mode": mode})
        return
    done = "global cut-off written; " if mode == "cutoff" else ""
    click.echo(f"recovered: {done}new epoch {observed.epoch}")
