"""What every handler of one admin API app shares: its settings, store, verifier and checker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from revoker.check import RevocationChecker

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore
    from revoker.tokens import TokenVerifier

__all__ = ["ApiContext"]


class ApiContext:
    """One app's settings and (optionally) its pinned store, held by its admin-token checker."""

    def __init__(self, settings: RevokerSettings, store: RedisTokenRevocationStore | None) -> None:
        self.settings = settings
        self.checker = RevocationChecker(store, settings=settings)

    @property
    def verifier(self) -> TokenVerifier:
        return self.checker.verifier

    @property
    def store(self) -> RedisTokenRevocationStore:
        """The pinned store, else the process-wide store of the running event loop."""
        return self.checker.store
