"""What every handler of one admin API app shares: its settings, store, verifier and checker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from revoker.check import RevocationChecker
from revoker.tokens import get_verifier

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore

__all__ = ["ApiContext"]


class ApiContext:
    """One app's settings and (optionally) its pinned store."""

    def __init__(self, settings: RevokerSettings, store: RedisTokenRevocationStore | None) -> None:
        self.settings = settings
        self._store = store
        self.verifier = get_verifier(settings)
        self.checker = RevocationChecker(store, settings=settings)

    @property
    def store(self) -> RedisTokenRevocationStore:
        """The pinned store, else the process-wide store of the running event loop."""
        if self._store is not None:
            return self._store
        from revoker.store import get_revocation_store

        return get_revocation_store(self.settings)
