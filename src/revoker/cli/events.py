"""``revoker events``: the SSF transmitter's dead letters and streams (relying parties are
registered clients: ``revoker clients add --backchannel-logout-uri``).

``revoker events dead-letter list`` shows the events a receiver never accepted (after
REVOKER_EVENTS_MAX_ATTEMPTS, or at once for a 400); ``replay`` queues them again, at the end of
their stream's queue, with the same jti. ``streams`` lists the streams with what they hold.
"""

from __future__ import annotations

import click

from revoker.cli._common import EPILOG, cli, cli_store, emit_json, json_option
from revoker.events.streams import EventsError
from revoker.events.transmitter import Transmitter

__all__ = [
    "dead_letter",
    "events",
    "replay",
    "show_dead_letters",
    "streams",
]


def _transmitter() -> Transmitter:
    return Transmitter.for_store(cli_store())


@cli.group("events", epilog=EPILOG)
def events() -> None:
    """Shared Signals events and back-channel logout: dead letters, streams."""


@events.group("dead-letter", epilog=EPILOG)
def dead_letter() -> None:
    """Events a receiver never accepted: list them, or queue them again."""


@dead_letter.command("list", epilog=EPILOG)
@click.option("--stream", "stream_id", default=None, help="Only this stream (or rp:<client>).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
def show_dead_letters(stream_id: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, newest first."""
    letters = _transmitter().queues.dead_letters(dest=stream_id, limit=limit)
    if as_json:
        emit_json([letter.as_dict() for letter in letters])
        return
    if not letters:
        click.echo("no dead letters")
    for letter in letters:
        click.echo(
            f"{letter.id}  stream {letter.dest}  jti {letter.jti}  "
            f"{letter.attempts} attempt(s)  {letter.error}"
        )


@dead_letter.command("replay", epilog=EPILOG)
@click.argument("ids", nargs=-1)
@click.option("--stream", "stream_id", default=None, help="Every dead letter of this stream.")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter.")
@json_option
def replay(ids: tuple[str, ...], stream_id: str | None, replay_all: bool, as_json: bool) -> None:
    """Queue dead letters again (by id, every one of --stream, or --all)."""
    if not ids and stream_id is None and not replay_all:
        raise click.UsageError("name dead-letter ids, --stream ID or --all")
    t = _transmitter()
    chosen = list(ids) or [
        letter.id for letter in t.queues.dead_letters(dest=stream_id, limit=1_000_000)
    ]
    try:
        done = t.queues.replay(chosen, exists=lambda dest: t.registry.destination(dest) is not None)
    except EventsError as e:
        raise click.UsageError(e.description) from None
    if as_json:
        emit_json({"replayed": [letter.id for letter in done]})
        return
    click.echo(f"replayed {len(done)} of {len(chosen)} dead letter(s)")


@events.command("streams", epilog=EPILOG)
@json_option
def streams(as_json: bool) -> None:
    """Every stream and relying party: status, events held, dropped."""
    t = _transmitter()
    rows = [
        {
            "stream_id": dest.id,
            "kind": dest.kind,
            "method": dest.method,
            "status": dest.status,
            "held": t.queues.length(dest.id),
            "dropped": t.queues.dropped(dest.id),
            "per_session_events": dest.per_session,
        }
        for dest in t.registry.destinations()
    ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(
            f"{row['stream_id']}  {row['status']}  {row['method']}  held {row['held']}  "
            f"dropped {row['dropped']}"
        )
