"""``revoker audit``: the audit trail, filtered, as lines for people or JSON lines for a SIEM."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from revoker.audit import KINDS, AuditQuery, read_audit
from revoker.cli._common import (
    EPILOG,
    EXIT_USAGE,
    UNIX_TIME,
    cli,
    cli_store,
    fail,
)

__all__ = ["FOLLOW_POLL_SECONDS", "audit"]

#: How often ``--follow`` reads the stream for new entries.
FOLLOW_POLL_SECONDS = 1.0


@cli.command(epilog=EPILOG)
@click.option("--since", type=UNIX_TIME, help="From this time (unix seconds or ISO 8601).")
@click.option("--until", type=UNIX_TIME, help="Up to this time, inclusive.")
@click.option("--tenant", help="Only entries of this tenant.")
@click.option("--user", help="Only this user's revocations (watermarks, reuse follow-ups).")
@click.option("--actor", help="Only entries by this actor.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(KINDS),
    help="Only this kind (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    show_default="0: all",
    help="Print at most this many entries (before --follow's new ones).",
)
@click.option("--reverse", is_flag=True, help="Newest first (not with --follow).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line (for a SIEM).")
@click.option("--follow", "-f", is_flag=True, help="Then wait for new entries and print them.")
def audit(
    since: float | None,
    until: float | None,
    tenant: str | None,
    user: str | None,
    actor: str | None,
    kinds: tuple[str, ...],
    limit: int,
    reverse: bool,
    as_json: bool,
    follow: bool,
) -> None:
    """Read the audit trail: every revocation, who asked for it, why, and when.

    Oldest first. With --json, one object a line with id, time (ISO 8601 UTC), at (unix
    seconds), kind, target, tenant, actor, reason, and a kind's own fields (a job chunk's
    count and families). --follow keeps printing new entries until interrupted.
    """
    from pydantic import ValidationError

    if follow and (reverse or until is not None):
        fail("--follow reads forward from now on: not with --reverse or --until", EXIT_USAGE)
    try:
        query = AuditQuery(
            since=since,
            until=until,
            tenant=tenant,
            user=user,
            actor=actor,
            kind=kinds,  # click.Choice checked them
            limit=1000,
            cursor=None,
            order="desc" if reverse else "asc",
        )
    except ValidationError as e:
        fail(e.errors()[0]["msg"].removeprefix("Value error, "), EXIT_USAGE)
    store = cli_store()
    printed = 0
    cursor: str | None = None
    while limit == 0 or printed < limit:
        page = store.run(read_audit(store.core, query.model_copy(update={"cursor": cursor})))
        for entry in page.entries[: limit - printed if limit else None]:
            _emit(entry.as_dict() if as_json else entry.line(), as_json)
            printed += 1
        cursor = page.last_id or cursor
        if page.next_cursor is None:
            break
    if not follow:
        return
    try:
        while True:
            time.sleep(FOLLOW_POLL_SECONDS)
            page = store.run(read_audit(store.core, query.model_copy(update={"cursor": cursor})))
            for entry in page.entries:
                _emit(entry.as_dict() if as_json else entry.line(), as_json)
            cursor = page.last_id or cursor
    except KeyboardInterrupt:
        return


def _emit(value: Any, as_json: bool) -> None:
    click.echo(json.dumps(value, sort_keys=True, ensure_ascii=False) if as_json else value)
