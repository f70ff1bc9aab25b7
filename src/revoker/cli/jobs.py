"""``revoker jobs``: list, show and follow bulk revocation jobs."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from revoker.cli._common import (
    EPILOG,
    EXIT_JOB_FAILED,
    EXIT_TIMEOUT,
    cli,
    emit_json,
    fail,
    json_option,
    when,
)
from revoker.job_record import JOB_STATUSES

if TYPE_CHECKING:
    from revoker.jobs import JobRecord


__all__ = [
    "exit_for",
    "follow",
    "jobs",
    "jobs_list",
    "jobs_show",
    "jobs_watch",
]


@cli.group(epilog=EPILOG)
def jobs() -> None:
    """List, show and follow bulk revocation jobs."""


def _job_line(record: JobRecord) -> str:
    target = record.tenant_id or "-"
    if record.user_id:
        target += f"/{record.user_id}"
    progress = f"{record.chunks_done}/{record.chunks_total}"
    dry = " (dry run)" if record.dry_run else ""
    return (
        f"{record.id}  {record.status:<8} {record.kind:<12} {target:<24} chunks {progress:<9} "
        f"families {record.families_revoked}/{record.families_matched}  "
        f"{when(record.created_at)}{dry}"
    )


def _job_details(record: JobRecord) -> list[str]:
    data = record.as_dict()
    lines = []
    for name, value in data.items():
        if name.endswith("_at") or name in {"issued_after", "issued_before"}:
            shown = when(value) if isinstance(value, int | float) else "-"
            if isinstance(value, int | float):
                shown += f"  ({value})"
        else:
            shown = "-" if value is None or value == "" else str(value)
        lines.append(f"{name + ':':<18}{shown}")
    return lines


@jobs.command("list", epilog=EPILOG)
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this state.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most N."
)
@json_option
def jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    """The most recent jobs, newest first."""
    from revoker.jobs import list_jobs

    records = list_jobs(limit=limit, status=status)
    if as_json:
        emit_json([record.as_dict() for record in records])
        return
    if not records:
        click.echo("no jobs", err=True)
    for record in records:
        click.echo(_job_line(record))


@jobs.command("show", epilog=EPILOG)
@click.argument("job_id")
@json_option
def jobs_show(job_id: str, as_json: bool) -> None:
    """Everything recorded about job JOB_ID."""
    from revoker.jobs import get_job

    record = get_job(job_id)
    if as_json:
        emit_json(record.as_dict())
        return
    for line in _job_details(record):
        click.echo(line)


@jobs.command("watch", epilog=EPILOG)
@click.argument("job_id")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Give up waiting after this many seconds (exit 7).",
)
@json_option
def jobs_watch(job_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow job JOB_ID with a live progress bar until it is done or failed."""
    record = follow(job_id, timeout=timeout)
    if as_json:
        emit_json(record.as_dict())
    exit_for(record)


class _Progress:
    """A progress bar on stderr fed with job records, shown once the chunk count is known."""

    def __init__(self, job_id: str, stack: contextlib.ExitStack) -> None:
        self.job_id = job_id
        self.stack = stack
        self.bar: Any = None
        self.shown = 0
        self.status = ""

    def __call__(self, record: JobRecord) -> None:
        if record.status != self.status:
            self.status = record.status
            if record.status == "pending":
                click.echo(f"job {self.job_id}: pending (waiting for a worker)", err=True)
        if self.bar is None and record.chunks_total > 0:
            self.bar = self.stack.enter_context(
                click.progressbar(
                    length=record.chunks_total,
                    label=f"job {self.job_id} ({record.kind})",
                    file=sys.stderr,
                    show_pos=True,
                    show_eta=True,
                    item_show_func=lambda _: None,
                )
            )
        if self.bar is not None:
            done = min(record.chunks_done, record.chunks_total)
            if done > self.shown:
                self.bar.update(done - self.shown)
                self.shown = done


def follow(job_id: str, *, timeout: float | None) -> JobRecord:
    from revoker.jobs import get_job, wait_for_job

    started = time.monotonic()
    record = get_job(job_id)
    if not record.finished:
        with contextlib.ExitStack() as stack:
            progress = _Progress(job_id, stack)
            progress(record)
            try:
                record = wait_for_job(job_id, timeout=timeout, on_progress=progress)
            except TimeoutError:
                fail(
                    f"job {job_id} still {get_job(job_id).status} after {timeout}s; "
                    f"follow it with: revoker jobs watch {job_id}",
                    EXIT_TIMEOUT,
                )
            progress(record)
    elapsed = time.monotonic() - started
    verb = "would revoke" if record.dry_run else "revoked"
    click.echo(
        f"job {job_id} {record.status}: {verb} {record.families_revoked} of "
        f"{record.families_matched} matching sessions "
        f"({record.chunks_done}/{record.chunks_total} chunks, followed {elapsed:.1f}s)",
        err=True,
    )
    return record


def exit_for(record: JobRecord) -> None:
    if record.status == "failed":
        fail(f"job {record.id} failed: {record.error or 'no error recorded'}", EXIT_JOB_FAILED)
