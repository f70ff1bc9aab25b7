"""The outbox sweep (beat): publish jobs still pending, and again those that stalled.

Lost messages: a running job is listed in ``P:jobs:running``; the sweep publishes again a job
whose progress has not moved for a visibility timeout (:func:`_republish_stalled`), so a chunk
message the broker lost does not leave its job running for ever.
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

    A job published earlier but still not started after ``visibility_timeout`` is published
    again (a broker that lost it); a duplicate message is harmless, the job task is idempotent.
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
            if (
                record.published_at is not None
                and now - record.published_at < settings.visibility_timeout
            ):
                continue
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
