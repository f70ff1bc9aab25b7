"""Bulk jobs as store plans: records, chunk plans, progress and status transitions. No I/O.

Like :class:`~revoker.store._base.StoreCore`, :class:`JobPlans` only builds plans (commands and
how to read their replies); the sync store (tasks, CLI, ``revoker.jobs``) and the async store
(the admin API) execute them. A step that needs one reply before it can send the next (claiming
an idempotency key, paging a list) is a :data:`Flow`: a generator yielding plans and receiving
their results, run by ``store.run(flow)`` in either store.

Status transitions: a job is recorded ``pending`` (:meth:`JobPlans.plan_record_job`), becomes
``running`` when a worker starts it (:meth:`JobPlans.start_job`, once: the first message to
start it owns it, see ``scripts/job_start.lua``), and finishes only through
:meth:`JobPlans.plan_finish` (``scripts/job_chunk_done.lua``): with its last chunk, or at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from revoker import keys as k
from revoker.bulk import BulkRevocation
from revoker.exceptions import DuplicateJob, InvalidIdentifier, JobNotFound
from revoker.job_record import ACTIVE_STATUSES, JobRecord, JobStatus
from revoker.store._base import Command, Plan, ScriptCall, StoreCore, _text

__all__ = [
    "CHUNK_LISTS_PER_ROUND_TRIP",
    "WALK_FIELD",
    "WALK_INDEX",
    "Flow",
    "JobPlans",
    "JobProgress",
    "JobStart",
]

T = TypeVar("T")

#: A multi-step store operation: yields plans, receives each one's result, returns its own.
Flow = Generator[Plan[Any], Any, T]

#: Chunk lists written per round trip when a job's plan is recorded.
CHUNK_LISTS_PER_ROUND_TRIP: Final = 100


#: The job record's field naming how its chunks walk (:meth:`JobPlans.plan_record_walk`), and
#: its value for the client index.
WALK_FIELD: Final = "walk"
WALK_INDEX: Final = "index"


def _none(_replies: list[Any]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class JobStart:
    """What starting a job for one message decided (see :meth:`JobPlans.start_job`)."""

    #: Whether this message runs the job (it claimed it, or it owns it); else it does nothing.
    run: bool
    #: Chunks of the job's recorded plan (a rerun reuses it), None when not planned yet.
    chunks_total: int | None


@dataclass(frozen=True, slots=True)
class JobProgress:
    """What the stalled-job watch reads of a running job."""

    status: str | None
    chunks_done: bytes | None
    watched: bytes | None
    moved_at: float | None
    #: When its job task last dispatched its chunks (None: not yet).
    dispatched_at: float | None = None
    #: Chunks begun and not done (held by a worker, or waiting for a retry).
    in_flight: int = 0
    #: When the stall watch last published it again.
    republished_at: float | None = None
    #: When any job's chunk last began (the workers are busy with chunks).
    chunk_begun_at: float | None = None


class JobPlans:
    """The plans of job storage, for both stores (see the module docstring)."""

    #: Lua scripts these plans call (registered by both stores).
    SCRIPTS: tuple[str, ...] = ("job_chunk_done", "job_start")

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        self.settings = core.settings
        self.keys = core.keys

    # --- records -------------------------------------------------------------------------------

    def plan_get_job(self, job_id: str) -> Plan[JobRecord]:
        """The job record; JobNotFound for an unknown or unusable id."""
        if not isinstance(job_id, str) or not job_id:
            raise JobNotFound(str(job_id))
        try:
            key = self.keys.job(job_id)
        except InvalidIdentifier:
            raise JobNotFound(job_id) from None

        def finish(replies: list[Any]) -> JobRecord:
            if not replies[0]:
                raise JobNotFound(job_id)
            return JobRecord.from_redis(replies[0])

        return Plan([("HGETALL", key)], finish)

    def list_jobs(self, *, limit: int, status: JobStatus | None) -> Flow[list[JobRecord]]:
        """The newest jobs first (only those with ``status`` if given); pages of ids, then their
        records, until ``limit`` are found or the list ends."""
        out: list[JobRecord] = []
        offset = 0
        page = max(limit, 100)
        while len(out) < limit:
            ids: list[str] = yield Plan(
                [("ZREVRANGE", self.keys.jobs, offset, offset + page - 1)],
                lambda replies: [_text(j) for j in replies[0]],
            )
            if not ids:
                break
            offset += len(ids)
            raws: list[Any] = yield Plan(
                [("HGETALL", self.keys.job(job_id)) for job_id in ids], lambda replies: replies
            )
            for raw in raws:
                if not raw:
                    continue
                record = JobRecord.from_redis(raw)
                if status is None or record.status == status:
                    out.append(record)
                    if len(out) == limit:
                        break
        return out

    def claim(self, job_id: str, idem_key: str) -> Flow[None]:
        """Claim the request's idempotency key for ``job_id``, or raise DuplicateJob.

        NX claims the selector; a leftover claim of a finished or vanished job is taken over.
        """
        existing_id = "unknown"
        for _ in range(3):
            holder: str | None = yield Plan(
                [("SET", idem_key, job_id, "NX", "EX", self.settings.job_retention),
                 ("GET", idem_key)],
                lambda replies: None if replies[0] else _text(replies[1] or b""),
            )  # fmt: skip
            if holder is None:
                return
            if not holder:
                continue  # released meanwhile: try again
            existing_id = holder
            status: str | None = yield Plan(
                [("HGET", self.keys.job(holder), "status")],
                lambda replies: None if replies[0] is None else _text(replies[0]),
            )
            if status in ACTIVE_STATUSES:
                raise DuplicateJob(holder)
            yield Plan([("DEL", idem_key)], _none)
        # Three lost races in a row: another caller keeps claiming this very request.
        raise DuplicateJob(existing_id)

    def plan_record_job(self, record: JobRecord, idem_key: str) -> Plan[None]:
        """Write a new job (``pending``) and list it, in the outbox too.

        The outbox entry leaves only when a worker starts the job, not when publishing succeeds:
        a broker that loses the message (restart without persistence) is covered.
        """
        fields = {**record.to_redis(), "idem_key": idem_key}
        score = int(record.created_at * 1000)
        return Plan(
            [
                ("HSET", self.keys.job(record.id), *_pairs(fields)),
                ("ZADD", self.keys.jobs, score, record.id),
                ("ZADD", self.keys.jobs_pending, score, record.id),
            ],
            _none,
        )

    def plan_mark_published(self, job_id: str, at: float) -> Plan[None]:
        return Plan([("HSET", self.keys.job(job_id), "published_at", repr(at))], _none)

    def plan_scope_watermark(self, request: BulkRevocation) -> Plan[float]:
        """The watermark that enforces an unfiltered request at once: its tenant's or its
        user's, whichever its scope names. Returns the cut-off (unix seconds)."""
        if request.scope == "tenant":
            return self.core.plan_revoke_tenant(
                request.target, reason=request.reason, actor=request.actor
            )
        return self.core.plan_revoke_user(
            request.target, tenant_id=request.tenant_id, reason=request.reason, actor=request.actor
        )

    # --- transitions ---------------------------------------------------------------------------

    def start_job(self, job_id: str, attempt: str = "") -> Flow[JobStart]:
        """Start the job for the message ``attempt`` (``scripts/job_start.lua``): the first
        message to run a pending job claims it; the owner's own rerun (redelivery, retry,
        takeover) runs it again; any other copy gets ``run=False`` and must do nothing.

        A job that runs goes off the outbox and on the running list (its progress moved now).
        """
        now = time.time()

        def verdict(replies: list[Any]) -> JobStart:
            code, snapshot, total = replies[0]
            if not int(code):
                return JobStart(run=False, chunks_total=None)
            return JobStart(run=True, chunks_total=int(total or 0) if snapshot else None)

        start: JobStart = yield Plan(
            [ScriptCall("job_start", [self.keys.job(job_id)], [attempt, repr(now)])], verdict
        )
        if start.run:
            yield Plan(
                [
                    ("ZREM", self.keys.jobs_pending, job_id),
                    ("ZADD", self.keys.jobs_running, now, job_id),
                ],
                _none,
            )
        return start

    def plan_take_over(self, job_id: str, attempt: str) -> Plan[None]:
        """Make the message ``attempt`` the owner of a started job (the stall watch's takeover:
        the old owner made no progress for a visibility timeout)."""
        return Plan([("HSET", self.keys.job(job_id), "attempt", attempt)], _none)

    def plan_finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        chunk: int | None = None,
        matched: int = 0,
        revoked: int = 0,
        fields: Mapping[str, str] | None = None,
    ) -> Plan[bool]:
        """The one finishing transition (``scripts/job_chunk_done.lua``). True if it finished
        the job.

        With ``chunk``: count that chunk once (``matched``/``revoked`` families), and finish the
        job ``status`` if it was the last of a running job. Without: finish it now (``status``,
        with ``fields`` written too). Either way a job already finished stays as it is; its keys
        get the retention. The caller then releases it (:meth:`release`).
        """
        keys = [self.keys.job(job_id), self.keys.job_chunks_done(job_id),
                self.keys.job_deliveries(job_id)]  # fmt: skip
        args: list[Any] = [
            "" if chunk is None else int(chunk),
            matched,
            revoked,
            repr(time.time()),
            self.settings.job_retention,
            status,
            "running",
            len(ACTIVE_STATUSES),
            *sorted(ACTIVE_STATUSES),
            *_pairs(fields or {}),
        ]
        return Plan([ScriptCall("job_chunk_done", keys, args)], lambda r: bool(r[0][1]))

    def release(self, job_id: str) -> Flow[None]:
        """Take a finished job off the outbox and the running list, and free its idempotency key
        (if still its own).

        The chunk lists stay until the job record expires: a chunk redelivered after the job
        finished (killed between counting itself and deleting its records) still needs its list.
        """
        idem_key: str | None = yield Plan(
            [
                ("ZREM", self.keys.jobs_pending, job_id),
                ("ZREM", self.keys.jobs_running, job_id),
                ("HGET", self.keys.job(job_id), "idem_key"),
            ],
            lambda replies: None if replies[2] is None else _text(replies[2]),
        )
        if idem_key is None:
            return
        holder: bytes | None = yield Plan([("GET", idem_key)], lambda replies: replies[0])
        if holder is not None and _text(holder) == job_id:
            yield Plan([("DEL", idem_key)], _none)

    def plan_note_error(self, job_id: str, message: str) -> Plan[None]:
        """Keep the last failure of a chunk (shown if the chunk is parked)."""
        return Plan([("HSET", self.keys.job(job_id), "last_error", message)], _none)

    def plan_last_error(self, job_id: str) -> Plan[str | None]:
        return Plan(
            [("HGET", self.keys.job(job_id), "last_error")],
            lambda replies: None if replies[0] is None else _text(replies[0]),
        )

    def plan_deliveries(self, job_id: str) -> Plan[tuple[dict[int, int], str | None]]:
        """Deliveries counted per chunk (a chunk past ``max_redeliveries`` is parked) and the
        last chunk failure noted: what a job's page shows beside its record."""

        def finish(replies: list[Any]) -> tuple[dict[int, int], str | None]:
            deliveries = {int(_text(n)): int(_text(c)) for n, c in (replies[0] or {}).items()}
            return deliveries, None if replies[1] is None else _text(replies[1])

        return Plan(
            [
                ("HGETALL", self.keys.job_deliveries(job_id)),
                ("HGET", self.keys.job(job_id), "last_error"),
            ],
            finish,
        )

    def plan_record_watermark(self, job_id: str, watermark: float) -> Plan[None]:
        """Keep a job's cut-off: a rerun after a crash reuses it instead of moving it."""
        return Plan([("HSET", self.keys.job(job_id), "watermark_at", repr(watermark))], _none)

    # --- chunks --------------------------------------------------------------------------------

    def save_chunk_plan(self, job_id: str, groups: Sequence[Sequence[int]]) -> Flow[int]:
        """Store each chunk's bucket list (JSON), a round trip per hundred; returns how many.
        The job's keys keep them for the retention."""
        ttl = self.settings.job_retention
        commands: list[Command | ScriptCall] = [
            ("SET", self.keys.job_chunk(job_id, n), json.dumps(list(buckets)), "EX", ttl)
            for n, buckets in enumerate(groups)
        ]
        for start in range(0, len(commands), CHUNK_LISTS_PER_ROUND_TRIP):
            yield Plan(commands[start : start + CHUNK_LISTS_PER_ROUND_TRIP], _none)
        return len(commands)

    def plan_record_snapshot(self, job_id: str, chunks_total: int) -> Plan[None]:
        """The chunk plan is complete: later runs reuse it (see :meth:`start_job`)."""
        return Plan(
            [("HSET", self.keys.job(job_id), "chunks_total", chunks_total, "snapshot", "1")], _none
        )

    def plan_chunk_buckets(self, job_id: str, chunk: int) -> Plan[list[int] | None]:
        """The bucket list of one chunk; None once it is gone."""

        def finish(replies: list[Any]) -> list[int] | None:
            return None if replies[0] is None else [int(b) for b in json.loads(replies[0])]

        return Plan([("GET", self.keys.job_chunk(job_id, chunk))], finish)

    def plan_done_chunks(self, job_id: str) -> Plan[set[int]]:
        return Plan(
            [("SMEMBERS", self.keys.job_chunks_done(job_id))],
            lambda replies: {int(n) for n in replies[0] or ()},
        )

    def begin_chunk(self, job_id: str, chunk: int) -> Flow[int | None]:
        """Count one more delivery of a chunk; returns the deliveries so far, or None when the
        chunk is already counted (then no delivery is counted)."""
        done: bool = yield Plan(
            [("SISMEMBER", self.keys.job_chunks_done(job_id), chunk)],
            lambda replies: bool(replies[0]),
        )
        if done:
            return None
        now = repr(time.time())
        deliveries: int = yield Plan(
            [
                ("HINCRBY", self.keys.job_deliveries(job_id), str(chunk), 1),
                # For the stall watch: the workers are busy with chunks (see JobProgress).
                ("SET", self.keys.jobs_chunk_begun, now),
            ],
            lambda replies: int(replies[0]),
        )
        return deliveries

    def plan_audit(
        self,
        kind: str,
        target: str,
        *,
        tenant_id: str | None,
        reason: str | None,
        actor: str | None,
        at_us: int,
        extra: dict[str, str],
        count: int = 0,
    ) -> Plan[None]:
        """One audit entry of a job's work, and ``count`` families on the job counter."""
        commands: list[Command | ScriptCall] = [
            self.core.audit_command(
                kind, target, tenant_id=tenant_id, reason=reason, actor=actor, at_us=at_us,
                extra=extra,
            )
        ]  # fmt: skip
        if count:
            commands.append(self.core.count_command("job_families", count))
        return Plan(commands, _none)

    def plan_forget_session(self, tenant_id: str | None, family_id: str) -> Plan[None]:
        """Delete a (revoked) family's session record, if it has one."""
        key = self.core.session_bucket(tenant_id, family_id)
        return Plan([] if key is None else [("HDEL", key, family_id)], _none)

    # --- the outbox and the stalled-job watch --------------------------------------------------

    def plan_pending_page(self, before_ms: int, offset: int, count: int) -> Plan[list[str]]:
        """Ids of the outbox created before ``before_ms``, oldest first."""
        return _ids_by_score(self.keys.jobs_pending, before_ms, offset, count)

    def plan_forget_pending(self, job_id: str) -> Plan[None]:
        return Plan([("ZREM", self.keys.jobs_pending, job_id)], _none)

    def plan_running(self, count: int) -> Plan[list[str]]:
        """The first ``count`` running jobs, least recently moved first."""
        return Plan(
            [("ZRANGE", self.keys.jobs_running, 0, count - 1)],
            lambda replies: [_text(j) for j in replies[0]],
        )

    def plan_progress(self, job_id: str) -> Plan[JobProgress]:
        def finish(replies: list[Any]) -> JobProgress:
            status, done, watched, dispatched_at, republished_at = replies[0]
            return JobProgress(
                None if status is None else _text(status),
                done,
                watched,
                _float(replies[1]),
                dispatched_at=_float(dispatched_at),
                in_flight=max(0, int(replies[2]) - int(replies[3])),
                republished_at=_float(republished_at),
                chunk_begun_at=_float(replies[4]),
            )

        return Plan(
            [
                ("HMGET", self.keys.job(job_id), "status", "chunks_done", "watch_done",
                 "dispatched_at", "republished_at"),
                ("ZSCORE", self.keys.jobs_running, job_id),
                ("HLEN", self.keys.job_deliveries(job_id)),
                ("SCARD", self.keys.job_chunks_done(job_id)),
                ("GET", self.keys.jobs_chunk_begun),
            ],
            finish,
        )  # fmt: skip

    def plan_mark_dispatched(self, job_id: str, now: float) -> Plan[None]:
        """The job task dispatched the job's chunks not done ``now``."""
        return Plan([("HSET", self.keys.job(job_id), "dispatched_at", repr(now))], _none)

    def plan_watch(self, job_id: str, done: bytes | None, now: float) -> Plan[None]:
        """Note where a running job's progress is, and that it moved ``now``."""
        return Plan(
            [
                ("HSET", self.keys.job(job_id), "watch_done", done or b"0"),
                ("ZADD", self.keys.jobs_running, now, job_id),
            ],
            _none,
        )

    def plan_republished(self, job_id: str, now: float) -> Plan[None]:
        """The stall watch published the job again ``now`` (its progress counts as moved)."""
        return Plan(
            [
                ("ZADD", self.keys.jobs_running, now, job_id),
                ("HSET", self.keys.job(job_id), "republished_at", repr(now)),
            ],
            _none,
        )

    def plan_forget_running(self, job_id: str) -> Plan[None]:
        return Plan([("ZREM", self.keys.jobs_running, job_id)], _none)

    # --- retention -----------------------------------------------------------------------------

    def plan_jobs_before(self, before_ms: int, offset: int, count: int) -> Plan[list[str]]:
        """Ids of jobs created before ``before_ms``, oldest first."""
        return _ids_by_score(self.keys.jobs, before_ms, offset, count)

    def plan_job_states(self, job_ids: Sequence[str]) -> Plan[list[tuple[str | None, int]]]:
        """(status, chunks_total) of each job; None status for a record that is gone."""

        def finish(replies: list[Any]) -> list[tuple[str | None, int]]:
            return [
                (None if status is None else _text(status), int(total or 0))
                for status, total in replies
            ]

        return Plan(
            [("HMGET", self.keys.job(job_id), "status", "chunks_total") for job_id in job_ids],
            finish,
        )

    def plan_delete_job(self, job_id: str, chunks_total: int) -> Plan[None]:
        """Delete a job's record, its chunk lists, its counters and its listing."""
        doomed = [self.keys.job(job_id), self.keys.job_chunks_done(job_id),
                  self.keys.job_deliveries(job_id)]  # fmt: skip
        doomed += [self.keys.job_chunk(job_id, n) for n in range(chunks_total)]
        return Plan([("DEL", *doomed), ("ZREM", self.keys.jobs, job_id)], _none)

    def plan_trim_audit(self, min_id: str) -> Plan[int]:
        """Drop audit entries older than ``min_id``; "~" lets Redis drop whole stream nodes only
        (bounded work per call)."""
        return Plan(
            [("XTRIM", self.keys.audit, "MINID", "~", min_id)], lambda replies: int(replies[0])
        )

    def plan_hdel(self, key: bytes | str, fields: Sequence[bytes]) -> Plan[int]:
        return Plan([("HDEL", key, *fields)], lambda replies: int(replies[0]))

    def plan_absent(self, key: bytes | str, fields: Sequence[bytes]) -> Plan[list[bytes]]:
        """Which of ``fields`` the hash ``key`` holds no value for (a client-index entry whose
        record is gone: the expiry's orphans)."""
        return Plan(
            [("HMGET", key, *fields)],
            lambda replies: [f for f, v in zip(fields, replies[0], strict=True) if v is None],
        )

    # --- the client index (keys, "The client index") ---------------------------------------

    def plan_index_since(self, tenant_id: str | None) -> Plan[int | None]:
        """Since when the tenant's client index holds every session (its marker; None: none or
        unreadable, so not known complete)."""
        return Plan(
            [("GET", self.keys.client_index_marker(tenant_id))],
            lambda replies: k.decode_index_since(replies[0]),
        )

    def plan_record_walk(self, job_id: str, *, index: bool) -> Plan[None]:
        """Keep how a job's chunks walk (the job record's ``walk`` field): the client index, or
        (field absent) every record of their buckets. Decided once, when the chunks are planned."""
        key = self.keys.job(job_id)
        command = ("HSET", key, WALK_FIELD, WALK_INDEX) if index else ("HDEL", key, WALK_FIELD)
        return Plan([command], _none)

    def plan_walks_index(self, job_id: str) -> Plan[bool]:
        """Whether the job's plan walks its client's index (:meth:`plan_record_walk`)."""
        return Plan(
            [("HGET", self.keys.job(job_id), WALK_FIELD)],
            lambda replies: replies[0] is not None and _text(replies[0]) == WALK_INDEX,
        )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ids_by_score(key: str, before: int, offset: int, count: int) -> Plan[list[str]]:
    return Plan(
        [("ZRANGE", key, "-inf", before, "BYSCORE", "LIMIT", offset, count)],
        lambda replies: [_text(j) for j in replies[0]],
    )


def _pairs(fields: Mapping[str, Any]) -> Iterable[Any]:
    for name, value in fields.items():
        yield name
        yield value
