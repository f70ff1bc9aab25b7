"""The Celery tasks of event delivery: the router (beat, every second) and one delivery task per
push destination at a time.

``revoker.events_route`` (beat, ``revoker.worker.BEAT_EVENTS_SECONDS``): routes new revocations
into the queues (:func:`~revoker.events.router.route`), then starts a delivery task for each push
destination that has events, is enabled, is not waiting out a backoff and has no task: it takes the
destination's lease for that task, so at most one task per destination is queued or running
(the per-stream concurrency limit: one, since events go in order). A lease whose task was lost
(a killed worker, a lost message) lapses after ``REVOKER_EVENTS_PUSH_TIMEOUT`` + 5 s and the next
beat starts another.

``revoker.events_deliver``: delivers one destination for up to ``REVOKER_EVENTS_PUSH_BUDGET``
seconds, then publishes itself again if events are left (a slow receiver yields the worker
between budgets, so it never holds more than one worker slot). Acks late (the worker's
configuration): a killed task is delivered again, and its event with the same jti.

Neither stores a result (``ignore_result``): the state is in Redis, and a result per beat tick
would pile up in the result backend.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from revoker.events.delivery import deliver, lease_ms
from revoker.events.router import lease, route
from revoker.events.streams import PUSH
from revoker.events.transmitter import Transmitter
from revoker.tasks._state import context, task

__all__ = ["deliver_events", "route_events", "start_deliveries"]

log = logging.getLogger("revoker.events")


def _transmitter() -> Transmitter:
    _settings, store = context()
    return Transmitter.for_store(store)


def start_deliveries(t: Transmitter) -> list[str]:
    """Publish a delivery task for every push destination with events and no task; returns
    their ids."""
    started = []
    now = time.time()
    for dest in t.registry.destinations():
        if dest.method != PUSH or dest.status != "enabled" or t.queues.length(dest.id) == 0:
            continue
        _jti, _attempts, next_at = t.queues.attempts(dest.id)
        if next_at > now:
            continue
        token = lease(t.client, t.keys.events_lease(dest.id), lease_ms(t))
        if token is None:
            continue  # a task is queued or running for it
        deliver_events.delay(dest.id, token)
        started.append(dest.id)
    return started


@task(name="revoker.events_route", ignore_result=True)
def route_events() -> dict[str, Any]:
    """Route new revocations to the queues and start the deliveries that have work."""
    t = _transmitter()
    if not t.configured:
        return {"routed": 0, "started": []}
    routed = route(t)
    return {"routed": routed, "started": start_deliveries(t)}


@task(name="revoker.events_deliver", bind=True, ignore_result=True)
def deliver_events(self: Any, dest_id: str, token: str | None = None) -> str:
    """Deliver one push destination's queue, in order, for one budget."""
    t = _transmitter()
    outcome = deliver(t, dest_id, token=token)
    if outcome == "more":
        # Yield the worker: the rest goes behind the work queued meanwhile.
        again = lease(t.client, t.keys.events_lease(dest_id), lease_ms(t))
        if again is not None:
            deliver_events.delay(dest_id, again)
    return outcome
