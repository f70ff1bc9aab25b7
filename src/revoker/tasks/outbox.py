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
publishes again a job whose progress has not moved for a visibility timeout
(:func:`_republish_stalled`), so a chunk message the broker lost does not leave its job running
for ever. That window is not shortened: a started job's own message is held by a live worker
(acknowledged late), and its chunks may rightly wait that long behind other jobs or run up to
the task time limit, so "no progress" sooner is not evidence of a loss. Hence chunk messages a
broker restart loses while they wait (their job already running) are still published again only
after a visibility timeout: a filtered job's remaining sessions stay valid until then.
"""

from __future__ import annotations

import logging
import time

from revoker.exceptions import JobNotFound
from revoker.publisher import publish_job
from revoker.store import SyncRedisTokenRevocationStore
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


def _republish_stalled(store: SyncRedisTokenRevocationStore, now: float) -> int:
    """Publish again the task of every running job whose progress has not moved for a
    visibility timeout; returns how many.

    A worker killed between taking a message from the Redis broker (BRPOP) and recording it as
    unacknowledged loses that message: kombu never restores it, and a job waiting for that chunk
    would stay running for ever. The job task is idempotent and re-dispatches only the chunks not
    done (duplicates of a running chunk are harmless: the first to finish counts), so republishing
    a stalled job is always safe. Progress is ``chunks_done``, watched here (``watch_done``).
    """
    stalled_before = now - store.settings.visibility_timeout
    republished = 0
    for job_id in store.execute(store.jobs.plan_running(JOB_PAGE)):
        progress = store.execute(store.jobs.plan_progress(job_id))
        if progress.status != "running":
            store.execute(store.jobs.plan_forget_running(job_id))  # finished (or expired)
            continue
        if progress.chunks_done != progress.watched:  # it moved: note where, and when
            store.execute(store.jobs.plan_watch(job_id, progress.chunks_done, now))
            continue
        if (progress.moved_at or now) > stalled_before:
            continue
        log.warning("job %s made no progress for %ss: publishing it again", job_id,
                    store.settings.visibility_timeout)  # fmt: skip
        try:
            record = store.get_job(job_id)
        except JobNotFound:
            continue
        # A new owner: the old one made no progress for a visibility timeout (it is gone: task
        # time limits are below it); a copy of the old message still queued does nothing.
        if publish_job(record, settings=store.settings, take_over=True):
            store.execute(store.jobs.plan_touch_running(job_id, now))
            republished += 1
    return republished
