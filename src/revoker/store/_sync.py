"""The synchronous store: what Celery tasks, the CLI and sync code use.

Same methods, same plans as :class:`~revoker.store.RedisTokenRevocationStore`; only the I/O
differs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, Unpack

from redis.cluster import RedisCluster

from revoker.exceptions import DenylistLost, StoreUnavailable
from revoker.integrity import Loss, Observation
from revoker.job_record import JobRecord, JobStatus
from revoker.metrics import counted
from revoker.rules import RevocationStatus
from revoker.settings import RevokerSettings, get_settings
from revoker.store._base import (
    BACKEND_ERRORS,
    NewSession,
    Plan,
    Rotation,
    RotationReply,
    ScriptCall,
    SessionRecord,
    StoreCore,
    atomic_pipeline,
    load_script,
)
from revoker.store._bulk import Exchange, bulk_exchange
from revoker.store._clients import make_sync_client
from revoker.store._durable import PROBE, judge, unavailable, with_durability
from revoker.store._feed import (
    FeedPlans,
    FeedRead,
    SnapshotBatch,
    SnapshotFamilies,
    SnapshotStart,
)
from revoker.store._jobs import Flow, JobPlans
from revoker.tokens import TokenData

__all__ = ["SyncRedisTokenRevocationStore"]

T = TypeVar("T")


class SyncRedisTokenRevocationStore:
    """The blocking twin of :class:`~revoker.store.RedisTokenRevocationStore`."""

    def __init__(self, client: Any = None, *, settings: RevokerSettings | None = None) -> None:
        self.settings = settings or get_settings()
        self.core = StoreCore(self.settings)
        self.keys = self.core.keys
        self.client = client if client is not None else make_sync_client(self.settings)
        self.is_cluster = isinstance(self.client, RedisCluster)
        self.core.cluster = self.is_cluster
        self.jobs = JobPlans(self.core)
        #: The change feed's and the snapshot's plans (what a mirror reads; not on a cluster).
        self.feed = FeedPlans(self.core)
        self.durability = self.settings.durability_policy
        self._scripts = {
            name: self.client.register_script(load_script(name))
            for name in (*StoreCore.SCRIPTS, *JobPlans.SCRIPTS)
        }

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> SyncRedisTokenRevocationStore:
        """A store for ``url``; other settings from the environment or ``overrides``."""
        return cls(settings=RevokerSettings.from_dsn(url, **overrides))

    def _execute(self, plan: Plan[T], *, durable: bool = False) -> T:
        """Run ``plan``; ``durable``: with REVOKER_DURABILITY's wait appended (store._durable)."""
        policy = self.durability if durable and self.durability.enabled else None
        if policy is not None:
            plan = with_durability(plan, policy, self.settings.durability_timeout)
        replies: list[Any] = [None] * len(plan.commands)
        try:
            plain: list[tuple[int, tuple[Any, ...]]] = []
            for i, command in enumerate(plan.commands):
                if isinstance(command, ScriptCall):
                    script = self._scripts[command.name]
                    replies[i] = script(keys=list(command.keys), args=list(command.args))
                else:
                    plain.append((i, command))
            if len(plain) == 1 and not plan.atomic:
                i, command = plain[0]
                replies[i] = self.client.execute_command(*command)
            elif plain:
                commands = [command for _, command in plain]
                unwrap = None
                if plan.atomic and not self.is_cluster:
                    commands, unwrap = atomic_pipeline(commands, plan.after_exec)
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                answers = pipe.execute()
                if unwrap is not None:
                    answers = unwrap(answers)
                for (i, _), reply in zip(plain, answers, strict=True):
                    replies[i] = reply
        except BACKEND_ERRORS as e:
            raise unavailable(e, policy) from e
        return plan.finish(replies)

    def execute(self, plan: Plan[T], *, durable: bool = False) -> T:
        """Run one plan (one round trip, plus its script calls); StoreUnavailable on failure.

        ``durable``: a revocation, acknowledged only once REVOKER_DURABILITY's wait confirms it
        (DurabilityNotReached, a StoreUnavailable, when it does not in time).
        """
        return self._execute(plan, durable=durable)

    def run(self, flow: Flow[T]) -> T:
        """Run a multi-step plan: each plan it yields is executed and its result sent back."""
        result: Any = None
        try:
            while True:
                result = self._execute(flow.send(result))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]  # a Flow[T] returns a T

    @contextlib.contextmanager
    def bulk_exchange(self) -> Iterator[Exchange]:
        """Batches of raw commands in one round trip each, for the fan-out (see store._bulk)."""
        with bulk_exchange(self.client) as exchange:
            yield exchange

    def scan_keys(self, pattern: str, *, count: int) -> Iterator[bytes]:
        """Every key matching ``pattern`` (SCAN, ``count`` keys examined per call; every
        primary of a cluster)."""
        try:
            yield from self.client.scan_iter(match=pattern, count=count)
        except BACKEND_ERRORS as e:
            raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e

    def hscan(self, key: bytes | str, cursor: int, *, count: int) -> tuple[int, dict[bytes, bytes]]:
        """One HSCAN page of a hash: (next cursor, fields)."""
        try:
            next_cursor, page = self.client.hscan(key, cursor, count=count)
        except BACKEND_ERRORS as e:
            raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e
        return int(next_cursor), page

    # --- the change feed (store._feed) --------------------------------------------------------

    def feed_tail(self) -> str:
        """The feed's last id ("0-0" when empty); ConfigurationError on a cluster."""
        return self._execute(self.feed.plan_feed_tail())

    def read_feed(
        self, after_id: str, *, count: int = 1000, block_ms: int | None = None
    ) -> FeedRead:
        """The feed's entries after ``after_id`` (see ``FeedPlans.plan_read_feed``); with
        ``block_ms``, the client's socket timeout must be longer than the wait."""
        return self._execute(self.feed.plan_read_feed(after_id, count, block_ms))

    def snapshot(self) -> Iterator[SnapshotStart | SnapshotBatch]:
        """A snapshot of what a check reads (see ``FeedPlans.plan_snapshot``): the start, then
        the batches, each read in a bounded round trip as it is iterated."""
        flow = self.feed.plan_snapshot()
        sent: Any = None
        while True:
            try:
                item = flow.send(sent)
            except StopIteration:
                return
            if isinstance(item, Plan):
                sent = self._execute(item)
            else:
                sent = None
                assert not isinstance(item, SnapshotFamilies)  # only with raw_families
                yield item

    # --- jobs ----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        """A bulk job's record; JobNotFound if there is none."""
        return self._execute(self.jobs.plan_get_job(job_id))

    def list_jobs(self, *, limit: int, status: JobStatus | None = None) -> list[JobRecord]:
        """The newest jobs first (only those with ``status`` if given)."""
        return self.run(self.jobs.list_jobs(limit=limit, status=status))

    def record_job(self, record: JobRecord, *, idem_key: str) -> None:
        """Claim the request's idempotency key (DuplicateJob if taken) and record the job."""
        self.run(self.jobs.claim(record.id, idem_key))
        self._execute(self.jobs.plan_record_job(record, idem_key))

    @counted("token")
    def revoke_token(
        self,
        jti: str,
        *,
        expires_at: float | None = None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> bool:
        """See :meth:`RedisTokenRevocationStore.revoke_token`."""
        return self._execute(
            self.core.plan_revoke_token(jti, expires_at=expires_at, reason=reason, actor=actor),
            durable=True,
        )

    @counted("family")
    def revoke_family(
        self,
        family_id: str,
        *,
        tenant_id: str | None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> bool:
        """See :meth:`RedisTokenRevocationStore.revoke_family`."""
        return self._execute(
            self.core.plan_revoke_family(
                family_id, tenant_id=tenant_id, reason=reason, actor=actor
            ),
            durable=True,
        )

    @counted("user")
    def revoke_user_tokens(
        self,
        user_id: str,
        *,
        tenant_id: str | None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> float:
        """See :meth:`RedisTokenRevocationStore.revoke_user_tokens`."""
        return self._execute(
            self.core.plan_revoke_user(user_id, tenant_id=tenant_id, reason=reason, actor=actor),
            durable=True,
        )

    @counted("tenant")
    def revoke_tenant_tokens(
        self, tenant_id: str, *, reason: str | None = None, actor: str | None = None
    ) -> float:
        """See :meth:`RedisTokenRevocationStore.revoke_tenant_tokens`."""
        return self._execute(
            self.core.plan_revoke_tenant(tenant_id, reason=reason, actor=actor), durable=True
        )

    def is_token_revoked(self, jti: str) -> bool:
        """See :meth:`RedisTokenRevocationStore.is_token_revoked`."""
        return self._execute(self.core.plan_is_token_revoked(jti))

    def is_revoked(self, token: TokenData) -> RevocationStatus:
        """See :meth:`RedisTokenRevocationStore.is_revoked` (cluster slots read one by one)."""
        core = self.core
        keys = core.check_keys(token)
        integrity = core.keys.integrity
        present = [key for key in keys if key is not None]
        present.append(integrity)
        seen = core.watch.snapshot()
        try:
            found: dict[str, Any] = {}
            groups: Sequence[list[str]] = (
                list(core.group_by_slot(present).values()) if self.is_cluster else [present]
            )
            script = self._scripts["check"]
            for group in groups:
                values = script(keys=group, args=core.check_args(token, group))
                found.update(zip(group, values, strict=True))
            judged = core.integrity_values(found[integrity], seen)
            if isinstance(judged, Loss):
                observed, found[core.keys.global_watermark] = self._execute(
                    core.plan_data_loss(judged)
                )
                self._loss_audit(judged)
                judged = observed
        except BACKEND_ERRORS as e:
            raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e
        if judged.state == "fail-closed":
            raise DenylistLost(
                "the revocation data was lost (REVOKER_ON_DATA_LOSS=fail-closed): failing closed "
                "until `revoker recover`"
            )
        return core.decide(token, keys, found)

    def integrity(self) -> dict[str, Any]:
        """See :meth:`RedisTokenRevocationStore.integrity`."""
        return self._execute(self.core.plan_integrity())

    def init(self) -> tuple[bool, str]:
        """See :meth:`RedisTokenRevocationStore.init`."""
        return self._execute(self.core.plan_init())

    @counted("global", "recovery")
    def recover(self, *, cutoff: bool, actor: str | None = None) -> Observation:
        """See :meth:`RedisTokenRevocationStore.recover`."""
        observed = (self._execute(self.core.plan_recover(cutoff=cutoff, actor=actor)))[0]
        # Acknowledged durable like any revocation: DurabilityNotReached if the wait falls short.
        self._execute(self.core.plan_recover_audit(cutoff=cutoff, actor=actor), durable=True)
        return observed

    def _loss_audit(self, loss: Loss) -> None:
        """Audit a loss just handled, durable as a revocation (REVOKER_DURABILITY): the wait
        covers the cut-off written before it. A check does not fail for it: a wait that falls
        short (or fails) is logged, and the check goes on with what it read."""
        plan = self.core.plan_loss_audit(loss)
        if plan is None:
            return
        try:
            self._execute(plan, durable=True)
        except StoreUnavailable as e:
            self.core.loss_not_durable(loss, e)

    def record_session(self, family_id: str, **session: Unpack[NewSession]) -> None:
        """See :meth:`RedisTokenRevocationStore.record_session`."""
        self._execute(self.core.plan_record_session(family_id, **session))

    def rotation_precheck(self, token: TokenData) -> RevocationStatus:
        """On a cluster, the jti and global watermark checks rotate_refresh.lua cannot make."""
        return self._execute(self.core.plan_rotation_precheck(token))

    def rotate_refresh(self, token: TokenData, **rotation: Unpack[Rotation]) -> RotationReply:
        """See :meth:`RedisTokenRevocationStore.rotate_refresh`."""
        # On a cluster the jti key lives in another slot: rotation_precheck checked it.
        plan = self.core.plan_rotate(token, check_jti=not self.is_cluster, **rotation)
        return self._execute(plan)

    def acknowledge_reuse(self) -> None:
        """After :meth:`rotate_refresh` answered "reuse": count the revoked family, and return
        once REVOKER_DURABILITY's wait confirms the reuse mark (DurabilityNotReached if not)."""
        self._execute(self.core.plan_reuse_count(), durable=True)

    def get_session(self, family_id: str, *, tenant_id: str | None) -> SessionRecord | None:
        """See :meth:`RedisTokenRevocationStore.get_session`."""
        return self._execute(self.core.plan_get_session(family_id, tenant_id=tenant_id))

    def health_check(self) -> dict[str, Any]:
        """See :meth:`RedisTokenRevocationStore.health_check`."""
        started = time.perf_counter()
        try:
            self.client.ping()
        except BACKEND_ERRORS as e:
            return self.core.health_result(started, e)
        return self.core.health_result(started, None)

    def durability_check(self) -> dict[str, Any]:
        """See :meth:`RedisTokenRevocationStore.durability_check`."""
        if not self.durability.enabled:
            return judge(self.durability, [{}, {}, {}, None, None])
        answers: list[Any] = []
        for command in PROBE:
            try:
                answers.append(self.client.execute_command(*command))
            except BACKEND_ERRORS as e:
                answers.append(e)
        return judge(self.durability, answers)

    def get_stats(self) -> dict[str, Any]:
        """See :meth:`RedisTokenRevocationStore.get_stats`."""
        return self._execute(self.core.plan_stats())

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __enter__(self) -> SyncRedisTokenRevocationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
