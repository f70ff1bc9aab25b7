"""Publish a job's Celery task: the sending half of the outbox, used by ``revoker.jobs`` (right
after recording a job) and by the outbox sweep in ``revoker.tasks`` (for jobs still pending).

Below both, so that neither imports the other. Celery is imported when a job is first published.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from revoker.job_record import TASK_FOR_KIND, JobRecord
from revoker.settings import RevokerSettings, get_settings
from revoker.store import get_sync_revocation_store

__all__ = ["publish_job"]

log = logging.getLogger("revoker.jobs")

_sender_lock = threading.Lock()
_senders: dict[tuple[str, str], Any] = {}


def _sender(settings: RevokerSettings) -> Any:
    """A Celery app that only publishes (no result backend: the job record is the state)."""
    from revoker._extras import requires_extra

    with requires_extra("worker", "publishing a job"):
        from celery import Celery

    from revoker.worker import celery_config

    key = (settings.effective_broker_url, settings.key_prefix)
    with _sender_lock:
        app = _senders.get(key)
        if app is None:
            config = celery_config(settings)
            config.pop("result_backend")
            app = Celery("revoker-sender", set_as_current=False)
            app.conf.update(config)
            _senders[key] = app
        return app


def publish_job(
    record: JobRecord, *, settings: RevokerSettings | None = None, take_over: bool = False
) -> bool:
    """Publish the job's task; True on success. A broker failure is logged, not raised.

    Each message carries an attempt id of its own: the first message to start the job owns it,
    and any other copy does nothing (``scripts/job_start.lua``). ``take_over`` makes this new
    message the owner of an already started job first (the stall watch's republish).
    """
    settings = settings or get_settings()
    store = get_sync_revocation_store(settings)
    attempt = secrets.token_hex(8)
    try:
        if take_over:
            store.execute(store.jobs.plan_take_over(record.id, attempt))
        _sender(settings).send_task(
            TASK_FOR_KIND[record.kind],
            args=[record.id],
            kwargs={"attempt": attempt},
            task_id=record.id,
            retry=True,
        )
    except Exception as e:  # noqa: BLE001 - kombu/amqp/redis raise many types; the outbox retries
        log.warning("publishing job %s failed, it stays pending: %s: %s", record.id, type(e), e)
        return False
    store.execute(store.jobs.plan_mark_published(record.id, time.time()))
    return True
