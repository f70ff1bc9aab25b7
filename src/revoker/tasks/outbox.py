"""The outbox sweep (beat): publish jobs still pending, and again those that stalled.

Lost messages, before a job starts: a job stays in the outbox (``P:jobs:pending``) until a worker
starts it, and a job published ``REVOKER_JOB_START_TIMEOUT`` seconds ago (30 by default) that no
worker has started is published again. A job message the broker lost (a Redis broker restarted
without persistence, a RabbitMQ queue that was not durable) is thus published again within
``max(REVOKER_JOB_START_TIMEOUT, OUTBOX_GRACE_SECONDS) + BEAT_OUTBOX_SECONDS`` (35 s by default):
it matters most for a filtered job, which has no watermark, so its sessions stay valid until it
runs. A job that is only waiting (workers busy or down) gets a copy per timeout; copies are
harmless, the first message to start the job owns it and the others do nothing
(``JobPlans.start_job``).

Lost messages, after a job started: a running job is listed in ``P:jobs:running``; the sweep
publishes it again (the job task re-dispatches the chunks not done) in two cases
(:func:`_republish_stalled`):

* its progress has not moved for a visibility timeout: the backstop, for a message lost with a
  worker killed at the wrong instant. That window stays long: a started job's chunks may rightly
  wait that long behind other work or run up to the task time limit.
* its chunk messages were lost while they waited (a broker restart): the chunks were dispatched
  ``REVOKER_JOB_START_TIMEOUT`` ago, none of them is running, and no chunk of any job began
  since, so no worker is busy with chunks ours could be queued behind (:func:`_chunks_lost`).
  Published again within ``REVOKER_JOB_START_TIMEOUT + 2 * BEAT_OUTBOX_SECONDS`` of the
  dispatch (a sweep may first have to note the job's progress), at most once per visibility
  timeout.

The job task itself is not watched more closely once started: its message is held, unacknowledged,
by the worker running it (a live worker finishes it; a dead one's message is redelivered), and a
shorter deadline would race a live worker planning a big tenant.
"""

from __future__ import annotations

import logging
import time

from revoker.exceptions import JobNotFound
from revoker.publisher import publish_job
from revoker.settings import RevokerSettings
from revoker.store import JobProgress, SyncRedisTokenRevocationStore
from revoker.tasks._state import context, task
from revoker.tasks.expiry import JOB_PAGE

__all__ = ["OUTBOX_GRACE_SECONDS", "publish_pending_jobs"]

log = logging.getLogger("revoker.tasks")

#: Seconds a new job is left to its own publish before the outbox sweep publishes it.
OUTBOX_GRACE_SECONDS = 5.0


@task(name="revoker.publish_pending_jobs")
def publish_pending_jobs(grace: float = OUTBOX_GRACE_SECONDS) -> int:
    """The outbox sweep: publish jobs still pending a few seconds after their creation.

    A job published earlier but still not started ``job_start_timeout`` seconds later is
    published again (a broker that lost it); a duplicate message is harmless: the first message
    to start the job runs it, any other does nothing.
    """
    settings, store = context()
    now = time.time()
    published = 0
    cutoff_ms = int((now - grace) * 1000)
    offset = 0
    while True:
        ids = store.execute(store.jobs.plan_pending_page(cutoff_ms, offset, JOB_PAGE))
        if not ids:
            break
        offset += len(ids)
        for job_id in ids:
            try:
                record = store.get_job(job_id)
            except JobNotFound:
                record = None
            if record is None or record.status != "pending":
                store.execute(store.jobs.plan_forget_pending(job_id))
                offset -= 1  # the entry left the set: later ones moved up a rank
                continue
            if record.published_at is not None:
                if now - record.published_at < settings.job_start_timeout:
                    continue
                log.warning(
                    "job %s was published %.0fs ago and no worker has started it: publishing it "
                    "again (a lost message, or no worker free)", job_id, now - record.published_at,
                )  # fmt: skip
            if publish_job(record, settings=settings):
                published += 1
            else:
                return published  # the broker is still down: try again on the next beat
    return published + _republish_stalled(store, now)


def _chunks_lost(settings: RevokerSettings, progress: JobProgress, now: float) -> bool:
    """Whether a running job's chunk messages are lost (a broker restarted without persistence
    while they waited), by the same rule as a job no worker started: its chunks were dispatched
    ``job_start_timeout`` ago, none of them is running and no chunk of any job began since (so
    the workers are not busy with other chunks, which they might have been ahead of ours).
    Not within a visibility timeout of the last republish (by either rule): if the signs mislead
    (workers busy with tasks other than chunks), one extra copy per visibility timeout."""
    timeout = settings.job_start_timeout
    return (
        progress.dispatched_at is not None
        and now - progress.dispatched_at >= timeout
        and progress.in_flight == 0
        and (progress.chunk_begun_at is None or now - progress.chunk_begun_at >= timeout)
        and (
            progress.republished_at is None
            or now - progress.republished_at >= settings.visibility_timeout
        )
    )


def _republish_stalled(store: SyncRedisTokenRevocationStore, now: float) -> int:
    """Publish again the task of every running job that stalled; returns how many.

    Stalled is either of:

    * its progress has not moved for a visibility timeout. A worker killed between taking a
      message from the Redis broker (BRPOP) and recording it as unacknowledged loses that
      message: kombu never restores it, and a job waiting for that chunk would stay running for
      ever. Progress is ``chunks_done``, watched here (``watch_done``).
    * its chunk messages were lost while waiting (:func:`_chunks_lost`): published again once
      per visibility timeout at most, ``job_start_timeout`` after the signs say so.

    The republished message takes the job over (the old owner's copies do nothing); the job task
    re-dispatches only the chunks not done (duplicates of a running chunk are harmless: the
    first to finish counts), so republishing a stalled job is always safe.
    """
    settings = store.settings
    stalled_before = now - settings.visibility_timeout
    republished = 0
    for job_id in store.execute(store.jobs.plan_running(JOB_PAGE)):
        progress = store.execute(store.jobs.plan_progress(job_id))
        if progress.status != "running":
            store.execute(store.jobs.plan_forget_running(job_id))  # finished (or expired)
            continue
        lost = False
        if progress.chunks_done != progress.watched:  # it moved: note where, and when
            store.execute(store.jobs.plan_watch(job_id, progress.chunks_done, now))
            if progress.watched is not None:
                continue
            lost = _chunks_lost(settings, progress, now)  # a first look: only that can tell
            if not lost:
                continue
        elif (progress.moved_at or now) > stalled_before:
            lost = _chunks_lost(settings, progress, now)
            if not lost:
                continue
        if lost:
            log.warning("job %s: its chunks were dispatched %.0fs ago, none is running and no "
                        "chunk began for %ss: their messages were lost, publishing it again",
                        job_id, now - (progress.dispatched_at or now),
                        settings.job_start_timeout)  # fmt: skip
        else:
            log.warning("job %s made no progress for %ss: publishing it again", job_id,
                        settings.visibility_timeout)  # fmt: skip
        try:
            record = store.get_job(job_id)
        except JobNotFound:
            continue
        # A new owner: the old one is gone (no progress for longer than task time limits) or
        # done (it dispatched the chunks that were lost); its copies still queued do nothing.
        if publish_job(record, settings=settings, take_over=True):
            store.execute(store.jobs.plan_republished(job_id, now))
            republished += 1
    return republished
