"""The asyncio store: what services and the middleware use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar, Unpack, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

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
from revoker.store._clients import make_async_client
from revoker.store._durable import PROBE, judge, unavailable, with_durability
from revoker.store._feed import (
    FeedPlans,
    FeedRead,
    SnapshotBatch,
    SnapshotFamilies,
    SnapshotStart,
)
from revoker.store._jobs import Flow, JobPlans
from revoker.store._pipelined import PipelinedConnection
from revoker.tokens import TokenData

__all__ = ["CHECK_CALLS", "RedisTokenRevocationStore"]

T = TypeVar("T")

#: Tokens whose check keys a store remembers (~1 KB each with the packed command): the tokens
#: in use at once.
CHECK_CALLS = 1024
#: Raised by every check while the denylist is lost and the policy is fail-closed.
_FAIL_CLOSED = DenylistLost(
    "the revocation data was lost (REVOKER_ON_DATA_LOSS=fail-closed): failing closed until "
    "`revoker recover`"
)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of a loss handling no check waited for as seen: its failure is the next
    check's to meet, not an "exception never retrieved" at exit."""
    if not task.cancelled():
        task.exception()


class RedisTokenRevocationStore:
    """Revoke tokens, families, users and tenants, and check tokens, with ``redis.asyncio``.

    Every method is one Redis round trip on a single Redis (the watermark writes add one script
    call). Backend failures raise :class:`~revoker.exceptions.StoreUnavailable`.
    """

    def __init__(self, client: Any = None, *, settings: RevokerSettings | None = None) -> None:
        self.settings = settings or get_settings()
        self.core = StoreCore(self.settings)
        self.keys = self.core.keys
        self.client = client if client is not None else make_async_client(self.settings)
        # A pool we built is ours to close; an injected client's pool belongs to its owner.
        self._owns_client = client is None
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
        #: (jti, tenant, sub, family) -> the check's keys, the keys it sends, its ARGV: pure
        #: functions of the ids and the key prefix (never stale), which a token recurring does
        #: not build again (six escapes and formats); emptied when CHECK_CALLS are held.
        #: Nothing here may mutate them.
        self._check_calls: dict[
            tuple[str, str | None, str, str | None],
            tuple[list[str | None], list[str], list[str]],
        ] = {}
        # The check's script call on one shared pipelined connection: a fifth of redis-py's CPU cost
        # per call (see _pipelined). Only for a client built here; an injected one is used as is.
        self._pipelined = (
            PipelinedConnection.for_client(
                self.client,
                timeout=self.settings.redis_timeout,
                connect_timeout=self.settings.redis_connect_timeout,
                # Loaded with each connection: the check's EVALSHA then always finds it.
                on_connect=[("SCRIPT", "LOAD", load_script("check"))],
            )
            if client is None and not self.is_cluster and self.settings.redis_sentinel is None
            else None
        )

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisTokenRevocationStore:
        """A store for ``url``; other settings from the environment or ``overrides``."""
        return cls(settings=RevokerSettings.from_dsn(url, **overrides))

    async def _execute(self, plan: Plan[T], *, durable: bool = False) -> T:
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
                    replies[i] = await script(keys=list(command.keys), args=list(command.args))
                else:
                    plain.append((i, command))
            if len(plain) == 1 and not plan.atomic:
                i, command = plain[0]
                replies[i] = await self.client.execute_command(*command)
            elif plain:
                commands = [command for _, command in plain]
                unwrap = None
                if plan.atomic and not self.is_cluster:
                    commands, unwrap = atomic_pipeline(commands, plan.after_exec)
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                answers = await pipe.execute()
                if unwrap is not None:
                    answers = unwrap(answers)
                for (i, _), reply in zip(plain, answers, strict=True):
                    replies[i] = reply
        except BACKEND_ERRORS as e:
            raise unavailable(e, policy) from e
        return plan.finish(replies)

    async def execute(self, plan: Plan[T], *, durable: bool = False) -> T:
        """Run one plan (one round trip, plus its script calls); StoreUnavailable on failure.

        ``durable``: a revocation, acknowledged only once REVOKER_DURABILITY's wait confirms it
        (DurabilityNotReached, a StoreUnavailable, when it does not in time).
        """
        return await self._execute(plan, durable=durable)

    async def run(self, flow: Flow[T]) -> T:
        """Run a multi-step plan: each plan it yields is executed and its result sent back."""
        result: Any = None
        try:
            while True:
                result = await self._execute(flow.send(result))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]  # a Flow[T] returns a T

    # --- revocations ---------------------------------------------------------------------------

    @counted("token")
    async def revoke_token(
        self,
        jti: str,
        *,
        expires_at: float | None = None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> bool:
        """Revoke one token by jti. True if newly revoked, False if it already was.

        ``expires_at`` (the token's ``exp``) bounds how long the entry is kept; without it the
        entry lives as long as an access token can.
        """
        return await self._execute(
            self.core.plan_revoke_token(jti, expires_at=expires_at, reason=reason, actor=actor),
            durable=True,
        )

    @counted("family")
    async def revoke_family(
        self,
        family_id: str,
        *,
        tenant_id: str | None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> bool:
        """Revoke one refresh family (a login session) and every token carrying it.

        ``tenant_id`` is the tenant the family's tokens carry (None for tenant-less tokens). It
        has no default: the marker lives under the tenant, so a forgotten tenant would revoke
        nothing. True if newly revoked.
        """
        return await self._execute(
            self.core.plan_revoke_family(
                family_id, tenant_id=tenant_id, reason=reason, actor=actor
            ),
            durable=True,
        )

    @counted("user")
    async def revoke_user_tokens(
        self,
        user_id: str,
        *,
        tenant_id: str | None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> float:
        """Revoke every token of ``user_id`` in ``tenant_id`` issued up to now.

        Returns the cut-off (unix seconds): tokens issued after this call returns stay valid.
        """
        return await self._execute(
            self.core.plan_revoke_user(user_id, tenant_id=tenant_id, reason=reason, actor=actor),
            durable=True,
        )

    @counted("tenant")
    async def revoke_tenant_tokens(
        self, tenant_id: str, *, reason: str | None = None, actor: str | None = None
    ) -> float:
        """Revoke every token of ``tenant_id`` issued up to now. Returns the cut-off."""
        return await self._execute(
            self.core.plan_revoke_tenant(tenant_id, reason=reason, actor=actor), durable=True
        )

    # --- checks --------------------------------------------------------------------------------

    async def is_token_revoked(self, jti: str) -> bool:
        """Whether this jti was revoked individually (the seed's check)."""
        return await self._execute(self.core.plan_is_token_revoked(jti))

    async def is_revoked(self, token: TokenData) -> RevocationStatus:
        """Whether a verified token is revoked by any rule, in one round trip.

        On a single Redis: one script call. On a Redis Cluster: one per slot involved (at most
        three: the jti's, the tenant's and the integrity slot), sent in parallel.
        """
        core = self.core
        integrity = core.keys.integrity
        ids = (token.jti, token.tenant, token.sub, token.family)
        call = self._check_calls.get(ids)
        if call is None:
            keys = core.check_keys(token)
            present = [key for key in keys if key is not None]
            present.append(integrity)
            call = (keys, present, core.ordered_check_args(token, present))
            if len(self._check_calls) >= CHECK_CALLS:
                self._check_calls.clear()
            self._check_calls[ids] = call
        keys, present, args = call
        seen = core.watch.snapshot()
        timeout = self.settings.redis_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            if self._pipelined is None:
                # The one bound on the whole check on a redis-py client: its own timeouts are
                # per socket operation (a Sentinel lookup, a connect and a read each get one),
                # so on a hung server they add up past REVOKER_REDIS_TIMEOUT. The pipelined
                # connection bounds its call itself (and must see its own timeout to reconnect).
                async with asyncio.timeout_at(deadline):
                    found = await self._lookup(token, present, args)
            else:
                found = await self._lookup(token, present, args)
            judged: Loss | Observation = core.integrity_values(found[integrity], seen)
            if isinstance(judged, Loss):
                # Within what is left of the bound; shielded, so that a handling cut short
                # still finishes (and is adopted) in the background rather than being redone.
                handling = asyncio.ensure_future(self._handle_loss(judged))
                handling.add_done_callback(_retrieved)
                async with asyncio.timeout_at(deadline):
                    observed, found[core.keys.global_watermark] = await asyncio.shield(handling)
                judged = observed
        except TimeoutError as e:
            raise StoreUnavailable(
                f"Redis is unavailable: no answer within {timeout:g} s (REVOKER_REDIS_TIMEOUT)"
            ) from e
        except BACKEND_ERRORS as e:
            raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e
        if judged.state == "fail-closed":
            raise _FAIL_CLOSED
        return core.decide(token, keys, found)

    async def integrity(self) -> dict[str, Any]:
        """The integrity hash as stored (epoch, seq, state, when it was lost or recovered)."""
        return await self._execute(self.core.plan_integrity())

    async def init(self) -> tuple[bool, str]:
        """Create the epoch if there is none (``revoker init``): (created?, the epoch)."""
        return await self._execute(self.core.plan_init())

    @counted("global", "recovery")
    async def recover(self, *, cutoff: bool, actor: str | None = None) -> Observation:
        """Adopt the data as it is now under a new epoch (``revoker recover``), after a global
        cut-off if ``cutoff``."""
        observed = (await self._execute(self.core.plan_recover(cutoff=cutoff, actor=actor)))[0]
        # Acknowledged durable like any revocation: DurabilityNotReached if the wait falls short.
        await self._execute(self.core.plan_recover_audit(cutoff=cutoff, actor=actor), durable=True)
        return observed

    async def _handle_loss(self, loss: Loss) -> tuple[Observation, Any]:
        """The data-loss plan of ``loss`` (its policy, once for every process), then its audit:
        the identity afterwards and the global watermark."""
        handled = await self._execute(self.core.plan_data_loss(loss))
        await self._loss_audit(loss)
        return handled

    async def _loss_audit(self, loss: Loss) -> None:
        """Audit a loss just handled, durable as a revocation (REVOKER_DURABILITY): the wait
        covers the cut-off written before it. A check does not fail for it: a wait that falls
        short (or fails) is logged, and the check goes on with what it read."""
        plan = self.core.plan_loss_audit(loss)
        if plan is None:
            return
        try:
            await self._execute(plan, durable=True)
        except StoreUnavailable as e:
            self.core.loss_not_durable(loss, e)

    async def _lookup(
        self, token: TokenData, present: list[str], args: list[str]
    ) -> dict[str, Any]:
        """The values of ``present`` for ``token``'s check, by key."""
        if self.is_cluster:
            return await self._cluster_check(token, present)
        values = await self._check(token, present, args)
        return dict(zip(present, values, strict=True))

    async def _check(
        self, token: TokenData, keys: list[str], args: list[str] | None = None
    ) -> list[Any]:
        """The check script on ``keys`` (all in one slot, or a single Redis); ``args``: its
        ARGV when the caller knows it (else check_args finds it)."""
        if args is None:
            args = self.core.check_args(token, keys)
        script = self._scripts["check"]
        if self._pipelined is None:
            return cast(list[Any], await script(keys=keys, args=args))
        try:
            return cast(
                list[Any],
                await self._pipelined.call("EVALSHA", script.sha, str(len(keys)), *keys, *args),
            )
        except ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            # Redis restarted or flushed its scripts: EVAL loads it again.
            return cast(
                list[Any],
                await self._pipelined.call("EVAL", script.script, str(len(keys)), *keys, *args),
            )

    async def _cluster_check(self, token: TokenData, keys: Sequence[str]) -> dict[str, Any]:
        groups = list(self.core.group_by_slot(keys).values())
        results = await asyncio.gather(*(self._check(token, group) for group in groups))
        found: dict[str, Any] = {}
        for group, values in zip(groups, results, strict=True):
            found.update(zip(group, values, strict=True))
        return found

    # --- sessions ------------------------------------------------------------------------------

    async def record_session(self, family_id: str, **session: Unpack[NewSession]) -> None:
        """Record a family (session) in its user's session bucket."""
        await self._execute(self.core.plan_record_session(family_id, **session))

    async def rotation_precheck(self, token: TokenData) -> RevocationStatus:
        """On a cluster, the jti and global watermark checks rotate_refresh.lua cannot make."""
        return await self._execute(self.core.plan_rotation_precheck(token))

    async def rotate_refresh(self, token: TokenData, **rotation: Unpack[Rotation]) -> RotationReply:
        """Rotate a verified refresh token to a new pair (see revoker.refresh)."""
        # On a cluster the jti key lives in another slot: rotation_precheck checked it.
        plan = self.core.plan_rotate(token, check_jti=not self.is_cluster, **rotation)
        return await self._execute(plan)

    async def acknowledge_reuse(self) -> None:
        """After :meth:`rotate_refresh` answered "reuse": count the revoked family, and return
        once REVOKER_DURABILITY's wait confirms the reuse mark (DurabilityNotReached if not)."""
        await self._execute(self.core.plan_reuse_count(), durable=True)

    async def get_session(self, family_id: str, *, tenant_id: str | None) -> SessionRecord | None:
        """The family's session record, or None if unknown or expired."""
        return await self._execute(self.core.plan_get_session(family_id, tenant_id=tenant_id))

    # --- jobs ----------------------------------------------------------------------------------

    # --- the change feed (store._feed) --------------------------------------------------------

    async def feed_tail(self) -> str:
        """The feed's last id ("0-0" when empty); ConfigurationError on a cluster."""
        return await self._execute(self.feed.plan_feed_tail())

    async def read_feed(
        self, after_id: str, *, count: int = 1000, block_ms: int | None = None
    ) -> FeedRead:
        """The feed's entries after ``after_id`` (see ``FeedPlans.plan_read_feed``); with
        ``block_ms``, the client's socket timeout must be longer than the wait."""
        return await self._execute(self.feed.plan_read_feed(after_id, count, block_ms))

    async def snapshot(self) -> AsyncIterator[SnapshotStart | SnapshotBatch]:
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
                sent = await self._execute(item)
            else:
                sent = None
                assert not isinstance(item, SnapshotFamilies)  # only with raw_families
                yield item

    async def get_job(self, job_id: str) -> JobRecord:
        """A bulk job's record; JobNotFound if there is none."""
        return await self._execute(self.jobs.plan_get_job(job_id))

    async def list_jobs(self, *, limit: int, status: JobStatus | None = None) -> list[JobRecord]:
        """The newest jobs first (only those with ``status`` if given)."""
        return await self.run(self.jobs.list_jobs(limit=limit, status=status))

    async def record_job(self, record: JobRecord, *, idem_key: str) -> None:
        """Claim the request's idempotency key (DuplicateJob if taken) and record the job."""
        await self.run(self.jobs.claim(record.id, idem_key))
        await self._execute(self.jobs.plan_record_job(record, idem_key))

    # --- operations ----------------------------------------------------------------------------

    async def health_check(self) -> dict[str, Any]:
        """PING Redis: ``{"healthy", "status", "latency_ms", "error"}``; never raises."""
        started = time.perf_counter()
        try:
            await self.client.ping()
        except BACKEND_ERRORS as e:
            return self.core.health_result(started, e)
        return self.core.health_result(started, None)

    async def durability_check(self) -> dict[str, Any]:
        """Whether the server honours REVOKER_DURABILITY: ``{"mode", "honoured", "detail"}`` and
        the facts judged by (see :func:`revoker.durability.assess`); never raises."""
        if not self.durability.enabled:
            return judge(self.durability, [{}, {}, {}, None, None])
        answers: list[Any] = []
        for command in PROBE:
            try:
                answers.append(await self.client.execute_command(*command))
            except BACKEND_ERRORS as e:
                answers.append(e)
        return judge(self.durability, answers)

    async def get_stats(self) -> dict[str, Any]:
        """Revocation counters and the audit stream's length."""
        return await self._execute(self.core.plan_stats())

    async def aclose(self) -> None:
        """Close the connection pool (an injected client is closed, its pool left to its owner)."""
        if self._pipelined is not None:
            self._pipelined.close()
        if self._owns_client and not self.is_cluster:
            await self.client.aclose(close_connection_pool=True)
        else:
            await self.client.aclose()

    close = aclose

    async def __aenter__(self) -> RedisTokenRevocationStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
