"""Poll delivery (RFC 8936): the receiver POSTs to its stream's endpoint and gets SETs back.

Request members: ``maxEvents`` (0 = acknowledge only), ``returnImmediately`` (else the request
waits up to ``REVOKER_EVENTS_POLL_WAIT`` seconds for a first event), ``ack`` (jtis received) and
``setErrs`` (jti -> ``{"err", "description"}``: the receiver could not accept it; the event goes
to the dead-letter list with that error). Acknowledgements are applied first, then the oldest
unacknowledged events are returned: ``{"sets": {jti: SET}, "moreAvailable": bool}``. An event
returned and not acknowledged is returned again by the next poll (at least once; the queue is
in Redis, so across restarts of the API too). A paused or disabled stream returns nothing.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from revoker.events.streams import POLL, EventsError
from revoker.events.transmitter import Transmitter
from revoker.metrics import EVENTS

__all__ = ["MAX_EVENTS", "PollRequest", "SetError", "poll_once"]

#: Most SETs one poll returns.
MAX_EVENTS: Final = 1000


class SetError(BaseModel):
    """One ``setErrs`` member: the receiver's error code and description."""

    model_config = ConfigDict(extra="forbid")

    err: str = Field(max_length=128)
    description: str | None = Field(None, max_length=1024)


class PollRequest(BaseModel):
    """The body of a poll (RFC 8936 §2.4)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_events: int | None = Field(None, alias="maxEvents", ge=0, le=MAX_EVENTS)
    return_immediately: bool = Field(False, alias="returnImmediately")
    ack: list[str] = Field(default_factory=list, max_length=MAX_EVENTS)
    set_errs: dict[str, SetError] = Field(
        default_factory=dict, alias="setErrs", max_length=MAX_EVENTS
    )


def poll_once(t: Transmitter, stream_id: str, request: PollRequest) -> tuple[dict[str, Any], bool]:
    """Apply acks and errors, then the response body and whether it had events (the caller
    waits and polls again for a long poll)."""
    dest = t.registry.destination(stream_id)
    if dest is None or dest.kind != "set":
        raise EventsError(404, "not_found", f"no stream {stream_id!r}")
    if dest.method != POLL:
        raise EventsError(400, "invalid_request", "this stream is delivered by push, not poll")
    EVENTS.labels("delivered").inc(len(t.queues.acknowledge(stream_id, request.ack)))
    for event in t.queues.find(stream_id, list(request.set_errs)):
        error = request.set_errs[event.jti]
        t.queues.dead_letter(stream_id, event, f"{error.err}: {error.description or ''}", 1)
        EVENTS.labels("dead_lettered").inc()
    limit = MAX_EVENTS if request.max_events is None else request.max_events
    if limit == 0 or dest.status != "enabled":
        return {"sets": {}, "moreAvailable": False}, False
    events = t.queues.head(stream_id, limit + 1)
    more = len(events) > limit
    sets = {event.jti: t.sign(event.kind, event.claims) for event in events[:limit]}
    return {"sets": sets, "moreAvailable": more}, bool(sets)
