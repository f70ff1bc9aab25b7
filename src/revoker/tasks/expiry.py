"""The expiry task: prune expired session records and revoked marks (in slices of buckets),
finished jobs past their retention, and old audit entries."""

from __future__ import annotations

import time
from collections.abc import Callable

from revoker import keys as k
from revoker.job_record import FINISHED_STATUSES
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tasks._state import context, task
from revoker.tasks.buckets import SCAN_FIELDS
from revoker.worker import BEAT_EXPIRE_SECONDS

__all__ = ["JOB_PAGE", "SCAN_COUNT", "expire_entries"]

#: Keys examined per SCAN call of the expiry task (~1 µs of Redis each under load).
SCAN_COUNT = 200
#: Jobs handled per page by the expiry task and the outbox sweep.
JOB_PAGE = 200


@task(name="revoker.expire_entries")
def expire_entries(slices: int = 1) -> dict[str, int]:
    """Prune expired session records and revoked marks, finished jobs past retention, and old
    audit entries.

    Reading every record and mark costs ~2 s of worker CPU and ~1.4 s of Redis per million per
    run, so the beat schedule passes ``slices``: each run then reads the buckets of one slice
    (bucket number modulo ``slices``, the slice turning with the clock), and an expired entry
    waits at most ``slices`` runs. Nothing it deletes can verify any more, so a late deletion
    only costs memory meanwhile.
    """
    _settings, store = context()
    now = time.time()
    part = (max(1, slices), int(now // BEAT_EXPIRE_SECONDS) % max(1, slices))
    pruned = _prune_sessions(store, now, part)
    orphans = _prune_index(store, part)
    marks = _prune_marks(store, now, part)
    jobs_removed = _prune_jobs(store, now)
    trimmed = store.execute(store.jobs.plan_trim_audit(store.core.lifetimes.audit_cutoff_id(now)))
    return {
        "sessions": pruned,
        "index_entries": orphans,
        "revoked_marks": marks,
        "jobs": jobs_removed,
        "audit_entries": trimmed,
    }


def _prune_jobs(store: SyncRedisTokenRevocationStore, now: float) -> int:
    """Delete the finished jobs created more than the retention ago; returns how many. An
    active one is kept whatever its age: an operator must see it."""
    removed = 0
    cutoff_ms = store.core.lifetimes.jobs_finished_before(now)
    offset = 0
    while True:
        ids = store.execute(store.jobs.plan_jobs_before(cutoff_ms, offset, JOB_PAGE))
        if not ids:
            break
        kept = 0
        states = store.execute(store.jobs.plan_job_states(ids))
        for job_id, (status, total) in zip(ids, states, strict=True):
            if status is not None and status not in FINISHED_STATUSES:
                kept += 1  # still active: an operator must see it
                continue
            store.execute(store.jobs.plan_delete_job(job_id, total))
            removed += 1
        offset += kept
    return removed


def _in_slice(key: bytes, part: tuple[int, int]) -> bool:
    """Whether a bucket key (``...:<n>`` or ``...:x<n>``) is in slice ``part[1]`` of ``part[0]``."""
    slices, slot = part
    if slices == 1:
        return True
    number = k.bucket_number(key)
    return number is not None and number % slices == slot


def _prune_marks(
    store: SyncRedisTokenRevocationStore, now: float, part: tuple[int, int] = (1, 0)
) -> int:
    """Delete the revoked families' marks older than the refresh lifetime plus leeway (no token
    of such a family can still verify); returns how many."""
    limit = store.core.lifetimes.marks_older_than(now)
    return _prune_buckets(
        store, store.keys.revoked_bucket_pattern(), part, lambda mark: _mark_before(mark, limit)
    )


def _mark_before(mark: bytes, limit_us: int) -> bool:
    # An unreadable time is never pruned by age (keys' rule); the bucket's TTL still ends it.
    at = k.mark_time(mark)
    return at is not None and at < limit_us


def _expired(record: bytes, limit: int) -> bool:
    parts = k.record_head(record)
    if parts is None:
        return False
    expires = k.read_time(parts[k.RECORD_EXPIRES])
    return expires is not None and expires < limit


def _prune_sessions(
    store: SyncRedisTokenRevocationStore, now: float, part: tuple[int, int] = (1, 0)
) -> int:
    """Delete the records of sessions whose refresh token can no longer verify; returns how many.

    Past ``expires`` plus the leeway no rotation can touch a record again, so reading it and
    deleting it in two steps races nothing.
    """
    limit = store.core.lifetimes.records_expired_before(now)
    keys = store.keys

    def index_entries(key: bytes, gone: dict[bytes, bytes]) -> None:
        # The expired records' client-index entries, after the records (keys, "The client
        # index"): by client, as each record names it.
        by_index: dict[bytes, list[bytes]] = {}
        for fid, record in gone.items():
            parts = k.record_head(record)
            if parts is not None and parts[k.RECORD_CLIENT]:
                index = keys.client_index_of_session_bucket(key, parts[k.RECORD_CLIENT])
                by_index.setdefault(index, []).append(fid)
        for index, fids in by_index.items():
            store.execute(store.jobs.plan_hdel(index, fids))

    return _prune_buckets(
        store,
        keys.session_bucket_pattern(),
        part,
        lambda record: _expired(record, limit),
        after=index_entries,
    )


def _prune_index(store: SyncRedisTokenRevocationStore, part: tuple[int, int] = (1, 0)) -> int:
    """Delete the client-index entries whose record is gone (a record deleted by a path that
    does not know its client, or cut between the two deletes); returns how many. An entry is
    only a hint (keys, "The client index"), so an orphan costs memory, never a revocation."""
    pruned = 0
    keys = store.keys
    for key in store.scan_keys(keys.client_index_pattern(), count=SCAN_COUNT):
        sessions = keys.session_bucket_of_index(key)
        if sessions is None or not _in_slice(key, part):
            continue
        cursor: int = 0
        while True:
            cursor, page = store.hscan(key, cursor, count=SCAN_FIELDS)
            fids = list(page)
            if fids:
                gone = store.execute(store.jobs.plan_absent(sessions, fids))
                if gone:
                    pruned += store.execute(store.jobs.plan_hdel(key, gone))
            if not cursor:
                break
    return pruned


def _prune_buckets(
    store: SyncRedisTokenRevocationStore,
    pattern: str,
    part: tuple[int, int],
    doomed: Callable[[bytes], bool],
    *,
    after: Callable[[bytes, dict[bytes, bytes]], None] | None = None,
) -> int:
    """Delete the fields whose value is ``doomed`` from every bucket matching ``pattern`` in
    slice ``part``; returns how many. Buckets found by SCAN, read by HSCAN pages (bounded steps).
    ``after`` is told each bucket's deleted fields and their values, once they are deleted.
    """
    pruned = 0
    for key in store.scan_keys(pattern, count=SCAN_COUNT):
        if not _in_slice(key, part):
            continue
        cursor: int = 0
        while True:
            cursor, page = store.hscan(key, cursor, count=SCAN_FIELDS)
            gone = [field for field, value in page.items() if doomed(value)]
            if gone:
                pruned += store.execute(store.jobs.plan_hdel(key, gone))
                if after is not None:
                    after(key, {field: page[field] for field in gone})
            if not cursor:
                break
    return pruned
