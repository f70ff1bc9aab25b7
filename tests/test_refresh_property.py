"""Property test of refresh rotation: random rotate / retry / replay / revoke / wait sequences.

A model predicts every outcome; after every step the store must agree with it: the family has
exactly the model's one current refresh token, and once revoked it stays revoked with every one of
its access tokens rejected. "wait" moves the family's last rotation time back past the grace
window (the window is measured on the Redis clock, which a test cannot advance).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REDIS_URL, delete_prefix, make_settings
from revoker import exceptions as exc
from revoker.keys import RECORD_FIELDS, bucket_of_user
from revoker.refresh import rotate_refresh_token_sync
from revoker.sessions import TokenPair, start_session_sync
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token

TENANT = "prop"
GRACE = 5

Step = tuple[str, int]
steps = st.lists(
    st.tuples(st.sampled_from(["rotate", "retry", "replay", "revoke", "wait"]), st.integers(0, 30)),
    min_size=1,
    max_size=14,
)


@dataclass
class Model:
    """What the family should be: its issued pairs, the current and previous one, revoked."""

    grace: int
    issued: list[TokenPair]
    current: int = 0
    previous: int | None = None
    grace_open: bool = False
    revoked: bool = False
    reuse_events: int = 0
    log: list[str] = field(default_factory=list)

    def expect(self, index: int) -> str:
        """The outcome of presenting ``issued[index]``'s refresh token (and its effect)."""
        if self.revoked:
            return "family_revoked"
        if index == self.current:
            return "rotated"
        if index == self.previous and self.grace > 0 and self.grace_open:
            return "grace"
        return "reuse"


def _age_rotation(client: Any, bucket: str, family: str, seconds: float) -> None:
    """Move the record's last rotation ``seconds`` into the past (closes the grace window)."""
    parts = client.hget(bucket, family).decode().split("|")
    at = RECORD_FIELDS.index("rotated")
    parts[at] = str(int(parts[at]) - int(seconds * 1_000_000))
    client.hset(bucket, family, "|".join(parts))


def _present(store: SyncRedisTokenRevocationStore, model: Model, index: int) -> None:
    expected = model.expect(index)
    try:
        pair = rotate_refresh_token_sync(model.issued[index].refresh_token, store=store)
        outcome = "rotated" if pair.refresh_jti not in {p.refresh_jti for p in model.issued} else ""
        if pair == model.issued[model.current]:
            outcome = "grace"
    except exc.RefreshTokenReused:
        outcome, pair = "reuse", None
    except exc.FamilyRevoked:
        outcome, pair = "family_revoked", None
    model.log.append(f"present #{index}: expected {expected}, got {outcome}")
    assert outcome == expected, model.log
    if outcome == "rotated":
        assert pair is not None
        model.issued.append(pair)
        model.previous, model.current = model.current, len(model.issued) - 1
        model.grace_open = True
    elif outcome == "reuse":
        model.revoked = True
        model.reuse_events += 1


def _check(store: SyncRedisTokenRevocationStore, model: Model, sync: Any) -> None:
    family_id = model.issued[0].family_id
    session = store.get_session(family_id, tenant_id=TENANT)
    assert session is not None
    # Exactly one current refresh token: the model's.
    assert session.current_jti == model.issued[model.current].refresh_jti, model.log
    marker = sync.exists(store.keys.family_revoked(TENANT, family_id))
    assert bool(marker) == model.revoked, model.log
    if model.revoked:
        for pair in model.issued:
            status = store.is_revoked(decode_token(pair.access_token, settings=store.settings))
            assert status.rule == "family", model.log


def _run(backend: str, grace: int, scenario: list[Step]) -> None:
    s = make_settings(refresh_reuse_grace_seconds=grace)
    if backend == "fakeredis":
        server = fakeredis.FakeServer()
        client: Any = fakeredis.FakeRedis(server=server)
    else:
        client = redis.Redis.from_url(REDIS_URL)
    store = SyncRedisTokenRevocationStore(client, settings=s)
    try:
        first = start_session_sync("pat", tenant_id=TENANT, store=store)
        model = Model(grace, [first])
        bucket = store.keys.session_bucket(
            TENANT, bucket_of_user("pat", store.settings.session_buckets)
        )
        for op, n in scenario:
            if op == "rotate":
                _present(store, model, model.current)
            elif op == "retry":
                _present(store, model, model.previous if model.previous is not None else 0)
            elif op == "replay":
                _present(store, model, n % len(model.issued))
            elif op == "revoke":
                store.revoke_family(first.family_id, tenant_id=TENANT, reason="logout")
                model.revoked = True
                model.log.append("revoke")
            elif model.previous is not None:  # wait
                _age_rotation(client, bucket, first.family_id, GRACE + 1)
                model.grace_open = False
                model.log.append("wait")
            _check(store, model, client)
        assert model.reuse_events <= 1, model.log  # detected once; later attempts see it revoked
    finally:
        delete_prefix(client, s.key_prefix)
        store.close()


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reuse follow-up goes nowhere: this tests the atomic step, not the job."""
    module = types.ModuleType("revoker.jobs")
    module.enqueue_family_reuse = lambda *a, **k: "job"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "revoker.jobs", module)


def property_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


@pytest.mark.parametrize("grace", [0, GRACE])
@property_settings(150)
@given(scenario=steps)
# The sequences a reviewer would try first, always run: replay of the token before the previous
# one inside the window, retry after the window, rotation racing a logout.
@example(scenario=[("rotate", 0), ("rotate", 0), ("replay", 0)])
@example(scenario=[("rotate", 0), ("retry", 0), ("wait", 0), ("retry", 0)])
@example(scenario=[("revoke", 0), ("rotate", 0), ("retry", 0)])
def test_rotation_model_on_fakeredis(grace: int, scenario: list[Step]) -> None:
    """fakeredis (its Lua): every outcome matches the model; one current token; no resurrection."""
    _run("fakeredis", grace, scenario)


@pytest.mark.redis
@pytest.mark.parametrize("grace", [0, GRACE])
@property_settings(60)
@given(scenario=steps)
def test_rotation_model_on_redis(grace: int, scenario: list[Step]) -> None:
    """The real Redis: every outcome matches the model; one current token; no resurrection."""
    _run("redis", grace, scenario)
