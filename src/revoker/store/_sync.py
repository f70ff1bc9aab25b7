"""The synchronous store: what Celery tasks, the CLI and sync code use.

Same methods, same plans as :class:`~revoker.store.RedisTokenRevocationStore`; only the I/O
differs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

from redis.cluster import RedisCluster

from revoker.exceptions import StoreUnavailable
from revoker.rules import RevocationStatus
from revoker.settings import RevokerSettings, get_settings
from revoker.store._base import (
    BACKEND_ERRORS,
    Plan,
    RotationReply,
    ScriptCall,
    SessionRecord,
    StoreCore,
    load_script,
)
from revoker.store._clients import make_sync_client
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
        self._scripts = {
            name: self.client.register_script(load_script(name)) for name in StoreCore.SCRIPTS
        }

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> SyncRedisTokenRevocationStore:
        """A store for ``url``; other settings from the environment or ``overrides``."""
        return cls(settings=RevokerSettings.from_dsn(url, **overrides))

    def _execute(self, plan: Plan[T]) -> T:
        replies: list[Any] = [None] * len(plan.commands)
        try:
            plain: list[tuple[int, tuple[Any, ...]]] = []
            for i, command in enumerate(plan.commands):
                if isinstance(command, ScriptCall):
                    script = self._scripts[command.name]
                    replies[i] = script(keys=list(command.keys), args=list(command.args))
                else:
                    plain.append((i, command))
            if len(plain) == 1:
                i, command = plain[0]
                replies[i] = self.client.execute_command(*command)
            elif plain:
                pipe = self.client.pipeline(transaction=False)
                for _, command in plain:
                    pipe.execute_command(*command)
                for (i, _), reply in zip(plain, pipe.execute(), strict=True):
                    replies[i] = reply
        except BACKEND_ERRORS as e:
            raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e
        return plan.finish(replies)

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
            self.core.plan_revoke_token(jti, expires_at=expires_at, reason=reason, actor=actor)
        )

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
            self.core.plan_revoke_family(family_id, tenant_id=tenant_id, reason=reason, actor=actor)
        )

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
            self.core.plan_revoke_user(user_id, tenant_id=tenant_id, reason=reason, actor=actor)
        )

    def revoke_tenant_tokens(
        self, tenant_id: str, *, reason: str | None = None, actor: str | None = None
    ) -> float:
        """See :meth:`RedisTokenRevocationStore.revoke_tenant_tokens`."""
        return self._execute(self.core.plan_revoke_tenant(tenant_id, reason=reason, actor=actor))

    def is_token_revoked(self, jti: str) -> bool:
        """See :meth:`RedisTokenRevocationStore.is_token_revoked`."""
        return self._execute(self.core.plan_is_token_revoked(jti))

    def is_revoked(self, token: TokenData) -> RevocationStatus:
        """See :meth:`RedisTokenRevocationStore.is_revoked` (cluster slots read one by one)."""
        keys = self.core.check_keys(token)
        present = [key for key in keys if key is not None]
        try:
            found: dict[str, Any] = {}
            groups: Sequence[list[str]] = (
                list(self.core.group_by_slot(present).values()) if self.is_cluster else [present]
            )
            script = self._scripts["check"]
            for group in groups:
                values = script(keys=group, args=self.core.check_args(token, group))
                found.update(zip(group, values, strict=True))
        except BACKEND_ERRORS as e:
            raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e
        return self.core.decide(token, keys, found)

    def record_session(self, family_id: str, **fields: Any) -> None:
        """See :meth:`RedisTokenRevocationStore.record_session`."""
        self._execute(self.core.plan_record_session(family_id, **fields))

    def rotate_refresh(self, token: TokenData, **new: Any) -> RotationReply:
        """See :meth:`RedisTokenRevocationStore.rotate_refresh`."""
        return self._execute(self.core.plan_rotate(token, check_jti=not self.is_cluster, **new))

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
