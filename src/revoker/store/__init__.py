"""The revocation store: Redis reads and writes, async for services and sync for tasks."""

from __future__ import annotations

import asyncio
import threading
import weakref

from revoker.settings import RevokerSettings, get_settings
from revoker.store._async import RedisTokenRevocationStore
from revoker.store._base import NewSession, Rotation, RotationReply, SessionRecord, StoreCore
from revoker.store._bulk import Exchange
from revoker.store._feed import FeedPlans, FeedRead, SnapshotBatch, SnapshotStart
from revoker.store._jobs import Flow, JobPlans, JobProgress, JobStart
from revoker.store._sync import SyncRedisTokenRevocationStore

__all__ = [
    "Exchange",
    "FeedPlans",
    "FeedRead",
    "Flow",
    "JobPlans",
    "JobProgress",
    "JobStart",
    "NewSession",
    "RedisTokenRevocationStore",
    "Rotation",
    "RotationReply",
    "SessionRecord",
    "SnapshotBatch",
    "SnapshotStart",
    "StoreCore",
    "SyncRedisTokenRevocationStore",
    "get_revocation_store",
    "get_sync_revocation_store",
    "reset_revocation_stores",
]

_lock = threading.Lock()
# An asyncio connection pool is bound to the loop it first ran on, so the process-wide async
# store is one per event loop.
_async_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisTokenRevocationStore] = (
    weakref.WeakKeyDictionary()
)
_sync_store: SyncRedisTokenRevocationStore | None = None


def get_revocation_store(settings: RevokerSettings | None = None) -> RedisTokenRevocationStore:
    """The async store for the configured Redis, one per running event loop.

    Outside a running loop a new, unshared store is returned.
    """
    settings = settings or get_settings()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return RedisTokenRevocationStore(settings=settings)
    with _lock:
        store = _async_stores.get(loop)
        if store is None or store.settings is not settings:
            store = _async_stores[loop] = RedisTokenRevocationStore(settings=settings)
        return store


def get_sync_revocation_store(
    settings: RevokerSettings | None = None,
) -> SyncRedisTokenRevocationStore:
    """The process-wide sync store (tasks, CLI)."""
    global _sync_store
    settings = settings or get_settings()
    with _lock:
        if _sync_store is None or _sync_store.settings is not settings:
            _sync_store = SyncRedisTokenRevocationStore(settings=settings)
        return _sync_store


def reset_revocation_stores() -> None:
    """Forget the process-wide stores (after a settings change or a fork)."""
    global _sync_store
    with _lock:
        _async_stores.clear()
        _sync_store = None
