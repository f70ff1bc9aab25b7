"""The snapshot a mirror loads before following the feed: everything a check reads, in bounded
batches (SCAN and HSCAN pages), however many revoked families there are."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from conftest import scrub_settings_environment
from revoker import keys as k
from revoker.rules import now_us
from revoker.settings import RevokerSettings
from revoker.store import SnapshotBatch, SnapshotStart, SyncRedisTokenRevocationStore
from revoker.store._base import Plan
from revoker.store._feed import (
    SNAPSHOT_FIELDS,
    SNAPSHOT_HASHES,
    SNAPSHOT_SCAN_COUNT,
    SnapshotFamilies,
)

TENANT = "big:co"


def _seed_families(
    store: SyncRedisTokenRevocationStore, tenant: str | None, count: int, *, big: int = 0
) -> set[str]:
    """``count`` revoked families spread over the session buckets' mark buckets (as a chunk
    writes them, ~120 a bucket), plus ``big`` in one bucket (paged by HSCAN)."""
    buckets = store.settings.session_buckets
    mark = k.encode_mark(now_us(), "seed").encode()
    ids: set[str] = set()
    pipe = store.client.pipeline(transaction=False)
    per_bucket: dict[int, list[str]] = {}
    for n in range(count):
        bucket = n % buckets
        per_bucket.setdefault(bucket, []).append(f"{k.family_id_prefix(bucket)}{n:x}")
    per_bucket.setdefault(7, []).extend(f"{k.family_id_prefix(7)}big{n}" for n in range(big))
    for bucket, fids in per_bucket.items():
        key = store.keys.revoked_bucket(tenant, bucket)
        for start in range(0, len(fids), 1000):
            part = fids[start : start + 1000]
            pipe.hset(key, mapping=dict.fromkeys(part, mark))
        pipe.expire(key, 3600)
        ids.update(fids)
        if len(pipe) > 2000:
            pipe.execute()
    pipe.execute()
    return ids


def _run(
    store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[SnapshotStart, list[SnapshotBatch], list[list[Any]]]:
    """The snapshot's items, and every plan's commands as sent."""
    plans: list[list[Any]] = []
    execute = store._execute

    def recording(plan: Any, **options: Any) -> Any:
        plans.append(list(plan.commands))
        return execute(plan, **options)

    monkeypatch.setattr(store, "_execute", recording)
    items = list(store.snapshot())
    start, batches = items[0], items[1:]
    assert isinstance(start, SnapshotStart)
    assert all(isinstance(b, SnapshotBatch) for b in batches)
    return start, batches, plans  # type: ignore[return-value]


def _families(batches: list[SnapshotBatch], tenant: str | None) -> list[str]:
    return [i for b in batches if b.kind == "family" and b.tenant_id == tenant for i in b.ids]


def test_a_snapshot_holds_every_kind_of_state(
    sync_store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked jtis (with their exp), families per tenant, user, tenant and global watermarks,
    the identity and the feed's last id; session records, jobs and stale marks are left out."""
    s = sync_store
    s.revoke_token("j,1", expires_at=time.time() + 100)
    s.revoke_family("1f.a", tenant_id=TENANT)
    s.revoke_family("foreign", tenant_id=None)
    s.revoke_user_tokens("u:1", tenant_id=TENANT)
    s.revoke_tenant_tokens(TENANT)
    s.recover(cutoff=True)
    stale = k.encode_mark(s.core.lifetimes.marks_older_than(time.time()) - 1, "old")
    s.client.hset(s.keys.family_revoked(TENANT, "1f.old"), "1f.old", stale)
    s.client.hset(s.keys.session_bucket(TENANT, 1), "1.x", "record")
    s.client.hset(s.keys.job("job-1"), "id", "job-1")
    start, batches, _ = _run(s, monkeypatch)
    assert start.feed_id == s.feed_tail()
    assert start.seq == int(s.client.hget(s.keys.integrity, "seq"))
    assert start.epoch == s.client.hget(s.keys.integrity, "epoch").decode()
    assert start.state == "recovered"
    got = {(b.kind, b.tenant_id, i) for b in batches for i in (b.ids or ("",))}
    assert got == {
        ("jti", None, "j,1"),
        ("family", TENANT, "1f.a"),
        ("family", None, "foreign"),
        ("user", TENANT, "u:1"),
        ("tenant", TENANT, ""),
        ("global", None, ""),
    }
    (jti,) = [b for b in batches if b.kind == "jti"]
    ttl = s.client.ttl(s.keys.jti("j,1"))
    assert abs(jti.expires[0] - (time.time() + ttl)) <= 2
    (family,) = [b for b in batches if b.kind == "family" and b.tenant_id == TENANT]
    at = family.values_us[0]
    assert family.expires[0] == -(-at // 10**6) + s.core.lifetimes.family_ttl


def test_full_size_switch_survives_the_settings_scrub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The autouse scrub of REVOKER_* settings keeps the harness's REVOKER_TEST_* switches (it
    deleted REVOKER_TEST_FULL_SIZE, so the 1M form below skipped even when asked for) and still
    deletes a real setting; no setting is named test_*, so keeping the prefix hides none."""
    monkeypatch.setenv("REVOKER_TEST_FULL_SIZE", "1")
    monkeypatch.setenv("REVOKER_JWT_SECRET", "x" * 40)
    scrub_settings_environment(monkeypatch)
    assert os.environ.get("REVOKER_TEST_FULL_SIZE") == "1"
    assert "REVOKER_JWT_SECRET" not in os.environ
    assert not [name for name in RevokerSettings.model_fields if name.startswith("test_")]


@pytest.mark.parametrize(
    "count",
    [pytest.param(20_000, id="20k"), pytest.param(1_000_000, id="1M", marks=pytest.mark.slow)],
)
def test_many_families_come_in_bounded_batches(
    sync_store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Every revoked family of two tenants comes exactly once (a big bucket paged), and no
    round trip asks for more than SNAPSHOT_HASHES buckets of SNAPSHOT_FIELDS fields or one
    SCAN page: a million families are many small replies, never one giant one."""
    s = sync_store
    if count > 100_000:
        if s.client.__class__.__module__.startswith("fakeredis"):
            pytest.skip("a million fields in fakeredis tests fakeredis, not the snapshot")
        if os.environ.get("REVOKER_TEST_FULL_SIZE") != "1":
            pytest.skip("full size (~40 s a backend) only with REVOKER_TEST_FULL_SIZE=1")
    wanted = _seed_families(s, TENANT, count, big=3 * SNAPSHOT_FIELDS)
    other = _seed_families(s, None, 500)
    started = time.perf_counter()
    _start, batches, plans = _run(s, monkeypatch)
    elapsed = time.perf_counter() - started
    got = _families(batches, TENANT)
    assert len(got) == len(set(got))
    assert set(got) == wanted
    assert set(_families(batches, None)) == other
    for commands in plans:
        hscans = [c for c in commands if c[0] == "HSCAN"]
        assert len(hscans) <= SNAPSHOT_HASHES
        assert all(c[-1] == SNAPSHOT_FIELDS for c in hscans)
        assert all(c[-1] == SNAPSHOT_SCAN_COUNT for c in commands if c[0] == "SCAN")
    # HSCAN's COUNT is a hint: a page may exceed it a little, never hold a whole big bucket.
    assert max(len(b.ids) for b in batches) <= SNAPSHOT_HASHES * 2 * SNAPSHOT_FIELDS
    assert len(plans) > count / (SNAPSHOT_HASHES * 200)
    print(f"snapshot of {count + 3 * SNAPSHOT_FIELDS + 500} families: {elapsed:.2f} s")


def test_raw_families_are_the_families_of_the_decoded_snapshot(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """What a mirror reads (``raw_families``: each family's field bytes, no value) is exactly the
    families the decoded snapshot gives, marks judged by the same rule: a corrupt or future mark
    kept (it revokes by presence), a mark too old to matter left out, in a page of one mark and
    in a page of many."""
    s = sync_store
    old = k.encode_mark(s.core.lifetimes.marks_older_than(time.time()) - 1, "old").encode()
    marks = [b"12abc|x", b"", b"9" * 400, b"|", old, k.encode_mark(now_us(), "ok").encode()]
    mixed = s.keys.revoked_bucket(TENANT, 3)
    for n, mark in enumerate(marks * 5):
        s.client.hset(mixed, f"{k.family_id_prefix(3)}m{n}", mark)
    same = s.keys.revoked_bucket(None, 4)
    s.client.hset(same, mapping={f"{k.family_id_prefix(4)}s{n}": old for n in range(5)})
    s.client.hset(s.keys.revoked_bucket(None, 5), "5.é", marks[0])
    decoded = {
        (b.tenant_id, i) for b in s.snapshot() if isinstance(b, SnapshotBatch) for i in b.ids
    }
    flow = s.feed.plan_snapshot(raw_families=True)
    raw: list[tuple[str | None, bytes]] = []
    sent: Any = None
    while True:
        try:
            item = flow.send(sent)
        except StopIteration:
            break
        sent = s._execute(item) if isinstance(item, Plan) else None
        if isinstance(item, SnapshotFamilies):
            raw += [(item.tenant_id, field) for field in item.fields]
            assert all(type(field) is bytes for field in item.fields)
        assert not isinstance(item, SnapshotBatch) or item.kind != "family"
    assert len(raw) == len(set(raw)) == len(decoded) == 5 * 5 + 1
    assert {(tenant, field.decode()) for tenant, field in raw} == decoded
    assert (None, "5.é".encode()) in raw
    assert not any(b"s" in field for _, field in raw)  # the stale page: left out whole
